"""The emulators' camera: a PNG made here (no imaging library on an agent's install) whose colour
says the printer's state, so a test can tell the snapshot at a print's start from the one at its end."""

from __future__ import annotations

import base64
import hashlib
import struct
import zlib

WIDTH, HEIGHT = 160, 120


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def state_color(state: str) -> tuple[int, int, int]:
    digest = hashlib.sha256(state.encode()).digest()
    return digest[0], digest[1], digest[2]


def camera_png(state: str) -> bytes:
    """A WIDTH x HEIGHT RGB PNG: a bed-like band at the bottom, the rest in `state`'s colour."""
    r, g, b = state_color(state)
    top = bytes([r, g, b]) * WIDTH
    bed = bytes([40, 40, 40]) * WIDTH
    rows = b"".join(b"\x00" + (bed if y >= HEIGHT * 3 // 4 else top) for y in range(HEIGHT))
    header = struct.pack(">IIBBBBB", WIDTH, HEIGHT, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows))
        + _chunk(b"IEND", b"")
    )


# The P1/A1 camera sends JPEG frames. A JPEG encoder is more than an emulator needs: this 64x36
# frame (a green chamber above a dark bed) was made once with Pillow and is sent as it is.
BAMBU_FRAME = base64.b64decode(
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAYEBQYFBAYGBQYHBwYIChAKCgkJChQODwwQFxQYGBcUFhYaHSUfGhsjHBYWICwg"
    "IyYnKSopGR8tMC0oMCUoKSj/2wBDAQcHBwoIChMKChMoGhYaKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgo"
    "KCgoKCgoKCgoKCgoKCj/wAARCAAkAEADASIAAhEBAxEB/8QAHwAAAQUBAQEBAQEAAAAAAAAAAAECAwQFBgcICQoL/8QAtRAA"
    "AgEDAwIEAwUFBAQAAAF9AQIDAAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAkM2JyggkKFhcYGRolJicoKSo0NTY3ODk6"
    "Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWGh4iJipKTlJWWl5iZmqKjpKWmp6ipqrKztLW2t7i5usLDxMXG"
    "x8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3+Pn6/8QAHwEAAwEBAQEBAQEBAQAAAAAAAAECAwQFBgcICQoL/8QAtREA"
    "AgECBAQDBAcFBAQAAQJ3AAECAxEEBSExBhJBUQdhcRMiMoEIFEKRobHBCSMzUvAVYnLRChYkNOEl8RcYGRomJygpKjU2Nzg5"
    "OkNERUZHSElKU1RVVldYWVpjZGVmZ2hpanN0dXZ3eHl6goOEhYaHiImKkpOUlZaXmJmaoqOkpaanqKmqsrO0tba3uLm6wsPE"
    "xcbHyMnK0tPU1dbX2Nna4uPk5ebn6Onq8vP09fb3+Pn6/9oADAMBAAIRAxEAPwDHooorwj8mCiiigAooooAKKKKACiuF/wCE"
    "vv8A/nja/wDfLf8AxVH/AAl9/wD88bX/AL5b/wCKrp+qVD3P9XsZ2X3ndUVwv/CX3/8Azxtf++W/+Ko/4S+//wCeNr/3y3/x"
    "VH1SoH+r2M7L7zuqK4X/AIS+/wD+eNr/AN8t/wDFUf8ACX3/APzxtf8Avlv/AIqj6pUD/V7Gdl953VFcL/wl9/8A88bX/vlv"
    "/iqP+Evv/wDnja/98t/8VR9UqB/q9jOy+85yiiivUPvQooooAKKKKACiiigD/9k="
)


# The X1 camera sends H.264. One 64x48 frame of ffmpeg's test pattern (colour bars), made once with
# `ffmpeg -f lavfi -i testsrc=s=64x48 -frames:v 1 -c:v libx264 -profile:v baseline -f h264`, its
# SEI dropped: SPS, PPS and an IDR slice in Annex B form.
X1_FRAME_H264 = base64.b64decode(
    "AAAAAWdCwArZBHsBEAAAAwAQAAADACDxImSAAAAAAWjLg8sgAAAAAWWIhF/5F7EHigACBz4oAAgJQALZFv9AWFaz9gAPaX30rf7+"
    "V9//n//+OADyUC3hRjCwCwg+uYCUSV8jZ12BxtjCAALA6UBAACBKAAIBA5+AD4dRLDQOXKA3X7ezbcADwcAkY8nLC5jDqQFiEQjI"
    "YTkOQpXLhD/DRbv6hRmFPzBhxQABAf8JABAAUAAQKghAAEDkAAQRgABCg4zMxqpSq4vpSGH4zMZXUVupJS1oYcMYOAAIMAAAjyf4"
    "AIjadraP/4FAACAeAAI3YOAAIMwAOQAMqua5pOHAAyqca0aTh+eEEilOThZyHYuNwRtf8GAAAIAMAHlKks0lfzfFAAEBL/Aqqc7V"
    "3/PgLnAivAiVujtnweg0gJ3Ju1TRYv/t4QABQw4AAgBBAACA+AAIB4MAAcwlyQT2ICF/fg7vb+Aytx5SNWtNOITdB9q1p2m0HtD/"
    "+CLAURCGSrw3+R4bP/+jDJqmUnM9/0/+wWEAHI2E7PPaxg7QxleewqKH9I8QDBgPwALJTjOqKdkpSv7/g0BAAEARATAQIg+OCG4O"
    "bgOgZxyoe/B3MbOEfgP462QagI/Fqpr4DwZVl4H+uQgBQADAAJCAAEBAAcAsA0AwFwE65A4ADYAAIAlpQIYFzgMp4Kpg43vvAFgM"
    "KAKjtRMAGFAAdHakAmAJ3AFIudEoHVTbcEnOA4AQh4E8HIPhQA0zzxJ4cJzNTQR1MZe7r7d0YsIpEpouxx4YAAgChQuEgACAEAAw"
    "AkNAAI4AAQBKuQKgAmAAksZVvNYAGAAIA9LvSNDCgJcOgAAlAAEB6rkDg0ABLpbnxLwIDgbF/JAAIPeHAMASAHL8GARUBQCDoMcI"
    "LwcQuHB6BHmHBx0Q2Cvz/GWH5Bm3/7y7Co9uBAEAAQMgAPZCAAEAVRw4NAAJMAAICv3IHAAJSgACAraTcQAIAAQDN2VwADgAAgHa"
    "mBUAaQAET2olA0gA6+1Igjgm/BaGIFX54NhkIQD4osLhoAA54Ze1a893oR///DFDxD9ogAhLRmtkI/IAEp/sVm+XTAAAEKAgQ8Io"
    "q+h38JGAQGBQ6AAIGgOAHgALlISQ+btQFPvBbmDHLf8hCmbiKEETcgcAwAHmkBOhdDYArcH7HEj/jYAEANI4"
)


def x1_frame_nals() -> list[bytes]:
    """X1_FRAME_H264's NAL units (SPS, PPS, IDR), without start codes."""
    return [nal for nal in X1_FRAME_H264.split(b"\x00\x00\x00\x01") if nal]
