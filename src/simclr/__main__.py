import sys

from simclr.cli import main

sys.exit(main())
