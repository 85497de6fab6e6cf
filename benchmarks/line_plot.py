"""A small line chart drawn with Pillow (the project does not depend on matplotlib): curves of a figure over
training steps, for the docs."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

#: Colours of the curves, in order (colour-blind-safe: Okabe-Ito).
COLOURS = ((0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0), (86, 180, 233))
SIZE = (760, 460)
MARGIN = dict(left=70, right=24, top=48, bottom=58)


def line_plot(path: Path, curves: dict[str, list[tuple[float, float]]], *, title: str, x_label: str,
              y_label: str, y_range: tuple[float, float] = (0.0, 1.0), y_ticks: int = 5) -> Path:
    """Draw ``curves`` (name -> (x, y) points, x ascending) into a PNG at ``path``; y is clipped to ``y_range``."""
    points = [p for curve in curves.values() for p in curve]
    if not points:
        raise ValueError("line_plot needs at least one point")
    image = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    left, top = MARGIN["left"], MARGIN["top"]
    right, bottom = SIZE[0] - MARGIN["right"], SIZE[1] - MARGIN["bottom"]
    x_max = max(x for x, _ in points) or 1.0
    low, high = y_range

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        y = min(max(y, low), high)
        return left + (right - left) * x / x_max, bottom - (bottom - top) * (y - low) / (high - low)

    for i in range(y_ticks + 1):  # horizontal grid lines with their values
        value = low + (high - low) * i / y_ticks
        _, y = to_pixel(0, value)
        draw.line([(left, y), (right, y)], fill=(225, 225, 225))
        draw.text((left - 8, y), f"{value:.2f}", fill="black", font=font, anchor="rm")
    for x in sorted({x for x, _ in points}):
        px, _ = to_pixel(x, low)
        draw.line([(px, bottom), (px, bottom + 4)], fill="black")
        draw.text((px, bottom + 8), f"{x:g}", fill="black", font=font, anchor="mt")
    draw.rectangle([left, top, right, bottom], outline="black")
    for (name, curve), colour in zip(curves.items(), COLOURS):
        pixels = [to_pixel(x, y) for x, y in curve]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=3)
        for px, py in pixels:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
    for row, (name, colour) in enumerate(zip(curves, COLOURS)):  # legend, top left inside the frame
        y = top + 12 + 16 * row
        draw.line([(left + 10, y), (left + 34, y)], fill=colour, width=3)
        draw.text((left + 40, y), name, fill="black", font=font, anchor="lm")
    draw.text((SIZE[0] / 2, 20), title, fill="black", font=font, anchor="mm")
    draw.text(((left + right) / 2, SIZE[1] - 18), x_label, fill="black", font=font, anchor="mm")
    draw.text((12, top - 22), y_label, fill="black", font=font, anchor="lm")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
