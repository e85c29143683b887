"""Inline thumbnails for `mmsearch search --preview`: iTerm2, kitty and sixel terminals.

Detection reads only the environment (TERM_PROGRAM, LC_TERMINAL, KITTY_WINDOW_ID, TERM) and
needs stdout to be a terminal; anywhere else (pipes, tmux/screen, unknown terminals) there is no
protocol and the caller prints plain lines, silently.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from indexer.media.images import ImageLoadError, open_image

Protocol = Literal["iterm", "kitty", "sixel"]
# Thumbnail box in pixels: about six text rows high in common terminal fonts.
THUMBNAIL_PX = 96
ESC = "\x1b"
ST = ESC + "\\"  # string terminator
KITTY_CHUNK = 4096  # the kitty graphics protocol's maximum payload per escape
ITERM_PROGRAMS = frozenset({"iTerm.app", "WezTerm"})
KITTY_TERMS = frozenset({"xterm-kitty", "xterm-ghostty"})
KITTY_PROGRAMS = frozenset({"ghostty"})
# Terminals whose TERM says they draw sixels (others may too, but cannot be detected offline).
SIXEL_TERMS = frozenset({"mlterm", "yaft-256color", "foot", "foot-extra", "contour"})
SIXEL_COLORS = 64
SIXEL_BAND = 6  # a sixel character covers six pixel rows
SIXEL_OFFSET = 63  # sixel data characters start at "?"
MULTIPLEXER_TERMS = ("screen", "tmux")


def detect(env: Mapping[str, str], *, is_tty: bool) -> Protocol | None:
    """The inline-image protocol this terminal speaks, or None for plain output."""
    term = env.get("TERM", "")
    if not is_tty or env.get("TMUX") or term.startswith(MULTIPLEXER_TERMS):
        return None  # multiplexers swallow or garble graphics escapes
    program = env.get("TERM_PROGRAM", "")
    if env.get("KITTY_WINDOW_ID") or term in KITTY_TERMS or program in KITTY_PROGRAMS:
        return "kitty"
    if program in ITERM_PROGRAMS or env.get("LC_TERMINAL") == "iTerm2":
        return "iterm"
    if term in SIXEL_TERMS or "sixel" in term:
        return "sixel"
    return None


def thumbnail(path: str | Path, *, size: int = THUMBNAIL_PX) -> Image.Image | None:
    """An RGB thumbnail within size x size, or None if the file cannot be read any more."""
    try:
        image = open_image(path, target_size=size)
    except ImageLoadError:
        return None  # moved or broken since indexing: the text line still names it
    image.thumbnail((size, size))
    return image


def render(path: str | Path, protocol: Protocol, *, size: int = THUMBNAIL_PX) -> str:
    """The escape sequence that draws the file's thumbnail ("" if it cannot be read)."""
    image = thumbnail(path, size=size)
    if image is None:
        return ""
    if protocol == "sixel":
        return sixel(image)
    png = _png(image)
    return kitty(png) if protocol == "kitty" else iterm(png, len(png))


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def iterm(png: bytes, size: int) -> str:
    """iTerm2 inline image (OSC 1337 File=...), followed by a newline."""
    data = base64.b64encode(png).decode("ascii")
    return f"{ESC}]1337;File=inline=1;size={size};preserveAspectRatio=1:{data}\a\n"


def kitty(png: bytes) -> str:
    """kitty graphics protocol: transmit-and-display a PNG in chunks, then a newline."""
    data = base64.b64encode(png).decode("ascii")
    chunks = [data[i : i + KITTY_CHUNK] for i in range(0, len(data), KITTY_CHUNK)] or [""]
    parts = []
    for n, chunk in enumerate(chunks):
        more = int(n < len(chunks) - 1)
        control = f"a=T,f=100,m={more}" if n == 0 else f"m={more}"
        parts.append(f"{ESC}_G{control};{chunk}{ST}")
    return "".join(parts) + "\n"


def sixel(image: Image.Image) -> str:
    """DEC sixel: a palette of SIXEL_COLORS, then bands of six rows, run-length encoded."""
    indexed = image.convert("RGB").quantize(colors=SIXEL_COLORS)
    pixels = np.asarray(indexed)  # (height, width) palette indices
    height, width = pixels.shape
    palette = indexed.getpalette() or []
    colors = [int(c) for c in np.unique(pixels)]
    out = [f"{ESC}Pq\"1;1;{width};{height}"]
    for c in colors:
        r, g, b = (round(v * 100 / 255) for v in palette[3 * c : 3 * c + 3])
        out.append(f"#{c};2;{r};{g};{b}")
    weights = (1 << np.arange(SIXEL_BAND))[:, None]  # (6, 1): bit of each row in a sixel
    for top in range(0, height, SIXEL_BAND):
        band = pixels[top : top + SIXEL_BAND]  # (<=6, width)
        for c in colors:
            bits = ((band == c) * weights[: len(band)]).sum(axis=0)  # (width,)
            if bits.any():
                out.append(f"#{c}{_run_length([int(b) for b in bits])}$")
        out.append("-")
    return "".join(out) + ST + "\n"


def _run_length(bits: list[int]) -> str:
    """Sixel characters for one colour row, repeats as !N<char>."""
    out, i = [], 0
    while i < len(bits):
        j = i
        while j < len(bits) and bits[j] == bits[i]:
            j += 1
        char = chr(SIXEL_OFFSET + bits[i])
        out.append(f"!{j - i}{char}" if j - i > 3 else char * (j - i))
        i = j
    return "".join(out)
