"""Make a folder of 200 good images plus one file of each bad kind (for tests and manual checks)."""
import io, sys, struct, zlib
from pathlib import Path
import numpy as np
from PIL import Image

def make(root: Path, n_good: int = 200) -> list[str]:
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
    for i in range(n_good):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(root / ("a" if i % 2 else "b") / f"good_{i:03d}.png")
    d = root / "a"
    unreadable = []
    (d / "zero.jpg").write_bytes(b""); unreadable.append("zero.jpg")
    buf = io.BytesIO(); Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(buf, "JPEG")
    (d / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2]); unreadable.append("truncated.jpg")
    (d / "notanimage.png").write_text("hello, I am text"); unreadable.append("notanimage.png")
    Image.new("CMYK", (20, 20), (10, 200, 30, 0)).save(d / "cmyk.jpg")
    Image.fromarray(np.full((20, 20), 50000, dtype=np.uint16)).save(d / "gray16.png")
    Image.new("RGB", (20, 20), (0, 128, 255)).convert("P", palette=Image.ADAPTIVE).save(d / "palette.png")
    Image.new("RGBA", (20, 20), (255, 0, 0, 100)).save(d / "rgba.png")
    Image.new("RGB", (1, 1), (9, 9, 9)).save(d / "one.png")
    exif = Image.Exif(); exif[0x0112] = 6
    Image.new("RGB", (30, 20), (40, 50, 60)).save(d / "rotated.jpg", exif=exif)
    # decompression bomb: a valid PNG header claiming 20000 x 20000 pixels, a few bytes of data
    raw = zlib.compress(b"\x00" * (20000 + 1) * 4)
    def chunk(t, b): return struct.pack(">I", len(b)) + t + b + struct.pack(">I", zlib.crc32(t + b) & 0xffffffff)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")
    (d / "bomb.png").write_bytes(png); unreadable.append("bomb.png")
    return sorted(str(d / u) for u in unreadable)

if __name__ == "__main__":
    print(make(Path(sys.argv[1])))


def write_jpeg(path: Path, size=(150, 120), seed: int = 0) -> Path:
    """A real JPEG of random pixels (large enough to be streamed at the default in_memory_max_side)."""
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, "JPEG", quality=90)
    return path


def cut_after_header(path: Path, keep: int = 64) -> Path:
    """Truncate a JPEG a few bytes into its scan data: the header still reads, decoding fails."""
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"\xff\xda") + keep])
    return path
