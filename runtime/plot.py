"""Pictures of training and of what a network computes, as PNG files.

    plot_history(history, "curves.png")          loss and accuracy per epoch, train and test
    save_feature_maps([("c1", maps)], "c1.png")  each channel of a layer as a gray tile
    save_decision_boundary("b.png", predict, points, labels)   a 2-D classifier's regions

Charts are drawn with matplotlib when it is installed, and otherwise by the small
rasterizer below (lines, dots, rectangles and a 3x5 pixel font on a NumPy canvas), so
that `symnet train --plot` works on any machine; both give the same image size. Every
file goes through runtime.data.save_png, which writes atomically. Only numpy and the
standard library are required: the runtime never imports sympy.
"""
import math

import numpy as np

from .data import save_png

PANEL = (400, 300)              # width, height in pixels of one chart panel
MARGIN = (58, 14, 26, 38)       # left, right, top, bottom
TRAIN_COLOR, TEST_COLOR = (0.12, 0.47, 0.71), (1.0, 0.5, 0.05)
PALETTE = [(0.12, 0.47, 0.71), (1.0, 0.5, 0.05), (0.17, 0.63, 0.17), (0.84, 0.15, 0.16),
           (0.58, 0.4, 0.74), (0.55, 0.34, 0.29), (0.89, 0.47, 0.76), (0.5, 0.5, 0.5),
           (0.74, 0.74, 0.13), (0.09, 0.75, 0.81)]

# A 3x5 pixel font: five rows of three pixels per character (letters as capitals).
FONT = {
    "0": "111 101 101 101 111", "1": "010 110 010 010 111", "2": "111 001 111 100 111",
    "3": "111 001 111 001 111", "4": "101 101 111 001 001", "5": "111 100 111 001 111",
    "6": "111 100 111 101 111", "7": "111 001 001 010 010", "8": "111 101 111 101 111",
    "9": "111 101 111 001 111", "a": "010 101 111 101 101", "b": "110 101 110 101 110",
    "c": "011 100 100 100 011", "d": "110 101 101 101 110", "e": "111 100 110 100 111",
    "f": "111 100 110 100 100", "g": "011 100 101 101 011", "h": "101 101 111 101 101",
    "i": "111 010 010 010 111", "j": "001 001 001 101 010", "k": "101 101 110 101 101",
    "l": "100 100 100 100 111", "m": "101 111 111 101 101", "n": "110 101 101 101 101",
    "o": "010 101 101 101 010", "p": "110 101 110 100 100", "q": "010 101 101 110 011",
    "r": "110 101 110 101 101", "s": "011 100 010 001 110", "t": "111 010 010 010 010",
    "u": "101 101 101 101 111", "v": "101 101 101 101 010", "w": "101 101 111 111 101",
    "x": "101 101 010 101 101", "y": "101 101 010 010 010", "z": "111 001 010 100 111",
    ".": "000 000 000 000 010", "-": "000 000 111 000 000", "+": "000 010 111 010 000",
    "%": "101 001 010 100 101", ":": "000 010 000 010 000", "/": "001 001 010 100 100",
    "_": "000 000 000 000 111", "(": "001 010 010 010 001", ")": "100 010 010 010 100",
    "=": "000 111 000 111 000", ",": "000 000 000 010 100", " ": "000 000 000 000 000",
    "[": "011 010 010 010 011", "]": "110 010 010 010 110", "?": "111 001 010 000 010",
}


class Canvas:
    """An RGB image of floats in [0, 1] with the few drawing operations charts need."""

    def __init__(self, width, height, background=(1.0, 1.0, 1.0)):
        self.pixels = np.empty((height, width, 3))
        self.pixels[...] = background

    @property
    def width(self):
        return self.pixels.shape[1]

    @property
    def height(self):
        return self.pixels.shape[0]

    def rect(self, x0, y0, x1, y1, color):
        """Fill the pixels x0 <= x < x1, y0 <= y < y1 (clipped to the canvas)."""
        x0, x1 = max(int(round(x0)), 0), min(int(round(x1)), self.width)
        y0, y1 = max(int(round(y0)), 0), min(int(round(y1)), self.height)
        if x0 < x1 and y0 < y1:
            self.pixels[y0:y1, x0:x1] = color

    def dot(self, x, y, radius, color):
        """A filled disc."""
        r = int(math.ceil(radius))
        cx, cy = int(round(x)), int(round(y))
        for dy in range(-r, r + 1):
            half = int(math.sqrt(max(radius * radius - dy * dy, 0)))
            self.rect(cx - half, cy + dy, cx + half + 1, cy + dy + 1, color)

    def line(self, x0, y0, x1, y1, color, width=2):
        """A straight line `width` pixels thick: squares stamped every half pixel."""
        steps = max(int(2 * max(abs(x1 - x0), abs(y1 - y0))), 1)
        for t in np.linspace(0.0, 1.0, steps + 1):
            x, y = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
            self.rect(x - width / 2, y - width / 2, x + width / 2, y + width / 2, color)

    def text(self, x, y, string, color=(0, 0, 0), scale=2, anchor="left"):
        """`string` in the 3x5 font, top edge at y; anchor left, center or right at x."""
        advance = 4 * scale
        if anchor != "left":
            x -= (len(string) * advance - scale) / (2 if anchor == "center" else 1)
        for k, char in enumerate(string.lower()):
            rows = FONT.get(char, FONT["?"]).split()
            for r, row in enumerate(rows):
                for c, bit in enumerate(row):
                    if bit == "1":
                        left, top = x + k * advance + c * scale, y + r * scale
                        self.rect(left, top, left + scale, top + scale, color)


def text_width(string, scale=2):
    return len(string) * 4 * scale - scale


# ---- training curves -----------------------------------------------------------------
def plot_history(history, path):
    """Loss (and, for classifiers, accuracy) per epoch for the train and test sets."""
    panels = _history_panels(history)
    if not panels:
        raise ValueError("the training history is empty: there is nothing to plot")
    try:
        image = _matplotlib_history(panels)
    except ImportError:
        image = _raster_history(panels)
    save_png(path, image)


def _history_panels(history):
    """[(title, [(label, color, epochs, values)])], one panel per metric with data."""
    panels = []
    for metric in ("loss", "accuracy"):
        series = []
        for split, color in (("train", TRAIN_COLOR), ("test", TEST_COLOR)):
            points = [(r["epoch"], r[f"{split}_{metric}"]) for r in history
                      if r.get(f"{split}_{metric}") is not None
                      and math.isfinite(r[f"{split}_{metric}"])]
            if points:
                epochs, values = zip(*points)
                series.append((split, color, list(epochs), list(values)))
        if series:
            panels.append((metric, series))
    return panels


def _raster_history(panels):
    canvas = Canvas(PANEL[0] * len(panels), PANEL[1])
    for k, (title, series) in enumerate(panels):
        epochs = [e for s in series for e in s[2]]
        values = [v for s in series for v in s[3]]
        frame = _Frame(canvas, k * PANEL[0], 0, PANEL[0], PANEL[1],
                       _padded(min(epochs), max(epochs)), _padded(min(values), max(values)))
        frame.axes(title, "epoch")
        drawn = []
        for label, color, xs, ys in series:
            points = [frame.to_pixel(x, y) for x, y in zip(xs, ys)]
            for (xa, ya), (xb, yb) in zip(points, points[1:]):
                canvas.line(xa, ya, xb, yb, color)
                drawn += [(xa + t * (xb - xa), ya + t * (yb - ya)) for t in np.linspace(0, 1, 9)]
            for x, y in points:
                canvas.dot(x, y, 3, color)
            drawn += points
        frame.legend([(label, color) for label, color, _, _ in series], drawn)
    return canvas.pixels


def _matplotlib_history(panels):
    from matplotlib.figure import Figure          # drawn on an Agg canvas: no display
    figure = Figure(figsize=(PANEL[0] * len(panels) / 100, PANEL[1] / 100), dpi=100)
    for k, (title, series) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), k + 1)
        for label, color, xs, ys in series:
            axes.plot(xs, ys, marker="o", color=color, label=label)
        axes.set_title(title)
        axes.set_xlabel("epoch")
        axes.xaxis.get_major_locator().set_params(integer=True, min_n_ticks=1)
        axes.legend()
    figure.tight_layout()
    return _figure_pixels(figure)


def _figure_pixels(figure):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


class _Frame:
    """One chart: a plot area in a canvas, its data ranges, axes, ticks and legend."""

    def __init__(self, canvas, left, top, width, height, xrange, yrange):
        self.canvas = canvas
        self.x0, self.x1 = left + MARGIN[0], left + width - MARGIN[1]
        self.y0, self.y1 = top + MARGIN[2], top + height - MARGIN[3]
        self.xrange, self.yrange = xrange, yrange

    def to_pixel(self, x, y):
        (xa, xb), (ya, yb) = self.xrange, self.yrange
        return (self.x0 + (x - xa) / (xb - xa) * (self.x1 - self.x0),
                self.y1 - (y - ya) / (yb - ya) * (self.y1 - self.y0))

    def axes(self, title, xlabel, ylabel=None, integer_x=True):
        c, black = self.canvas, (0, 0, 0)
        c.text((self.x0 + self.x1) / 2, self.y0 - 18, title, anchor="center")
        for value in nice_ticks(*self.yrange):
            _, y = self.to_pixel(self.xrange[0], value)
            c.rect(self.x0 - 5, y, self.x0, y + 1, black)
            c.text(self.x0 - 8, y - 5, format_tick(value), anchor="right")
        xticks = nice_ticks(*self.xrange, integer=integer_x)
        for value in xticks:
            x, _ = self.to_pixel(value, self.yrange[0])
            c.rect(x, self.y1, x + 1, self.y1 + 5, black)
            c.text(x, self.y1 + 8, format_tick(value), anchor="center")
        c.text((self.x0 + self.x1) / 2, self.y1 + 24, xlabel, anchor="center")
        if ylabel:
            c.text(self.x0 - 8, self.y0 - 18, ylabel, anchor="right")
        c.rect(self.x0 - 1, self.y0, self.x0 + 1, self.y1 + 1, black)
        c.rect(self.x0 - 1, self.y1, self.x1, self.y1 + 2, black)

    def legend(self, entries, points):
        """Label the series in the corner of the plot area that covers fewest `points`."""
        width, height = max(text_width(label) for label, _ in entries) + 34, 16 * len(entries) + 6
        corners = [(self.x1 - width - 4, self.y0 + 4), (self.x1 - width - 4, self.y1 - height - 4),
                   (self.x0 + 6, self.y0 + 4), (self.x0 + 6, self.y1 - height - 4)]
        left, top = min(corners, key=lambda c: sum(c[0] - 8 <= x <= c[0] + width + 8 and
                                                   c[1] - 8 <= y <= c[1] + height + 8
                                                   for x, y in points))
        self.canvas.rect(left, top, left + width, top + height, (1, 1, 1))
        for k, (label, color) in enumerate(entries):
            y = top + 16 * k + 11
            self.canvas.line(left + 4, y, left + 22, y, color)
            self.canvas.text(left + 28, y - 5, label)


def _padded(low, high, fraction=0.05):
    """A data range with `fraction` of room each side (a single value gets some too)."""
    span = high - low
    pad = span * fraction if span > 0 else (abs(high) * fraction or 0.5)
    return low - pad, high + pad


def nice_ticks(low, high, count=5, integer=False):
    """Round values (steps of 1, 2 or 5 times a power of ten) in [low, high], about
    `count` of them (up to 1.5 times as many)."""
    raw = (high - low) / max(count - 1, 1) / 1.5
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    if integer:
        step = max(1, round(step))
    first = math.ceil(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def format_tick(value):
    """Short tick labels: 3 significant digits, no trailing zeros."""
    return f"{value:.3g}"


# ---- feature maps --------------------------------------------------------------------
def save_feature_maps(maps, path, columns=8, tile=56):
    """Tile the channels of each layer: `maps` is [(name, array [C, H, W] or [H, W])].

    Each channel is scaled to its own min..max (a constant one is mid-gray) and enlarged
    by a whole factor to about `tile` pixels; a layer's tiles wrap after `columns`."""
    gap, label_height, margin = 4, 18, 8
    layers = []
    for name, array in maps:
        array = np.asarray(array, dtype=np.float64)
        array = array[None] if array.ndim == 2 else array
        if array.ndim != 3 or array.size == 0:
            raise ValueError(f"feature map '{name}' has shape {list(array.shape)}; "
                             "expected [channels, height, width]")
        scale = max(1, round(tile / max(array.shape[1:])))
        layers.append((name, array, scale))
    width = max(max(min(len(a), columns) * (a.shape[2] * s + gap) - gap,
                    text_width(f"{n} {list(a.shape)}")) for n, a, s in layers) + 2 * margin
    height = margin + sum(label_height + math.ceil(len(a) / columns) * (a.shape[1] * s + gap)
                          for _, a, s in layers) + margin
    canvas = Canvas(width, height, background=(0.18, 0.18, 0.18))
    top = margin
    for name, array, scale in layers:
        canvas.text(margin, top + 2, f"{name} {list(array.shape)}", color=(1, 1, 1))
        top += label_height
        h, w = array.shape[1] * scale, array.shape[2] * scale
        for k, channel in enumerate(array):
            row, col = divmod(k, columns)
            left, y = margin + col * (w + gap), top + row * (h + gap)
            image = np.kron(normalized(channel), np.ones((scale, scale)))
            canvas.pixels[y:y + h, left:left + w] = image[..., None]
        top += math.ceil(len(array) / columns) * (h + gap)
    save_png(path, canvas.pixels)


def normalized(channel):
    """Values scaled to [0, 1]; a constant channel becomes 0.5."""
    low, high = float(channel.min()), float(channel.max())
    if not high > low:
        return np.full(channel.shape, 0.5)
    return (channel - low) / (high - low)


# ---- decision regions ----------------------------------------------------------------
def save_decision_boundary(path, predict, points, labels=None, size=(480, 480), step=2):
    """The regions a 2-feature classifier assigns to each class, with the data on top.

    `predict(xy)` maps an array [M, 2] of points to M class indices; the plane around
    `points` [n, 2] is sampled every `step` pixels and coloured by class (light), then
    the points are drawn as dots in their label's colour (dark), outlined in black."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise ValueError(f"decision boundaries need points shaped [n, 2], got "
                         f"{list(points.shape)}")
    canvas = Canvas(*size)
    frame = _Frame(canvas, 0, 0, size[0], size[1],
                   _padded(points[:, 0].min(), points[:, 0].max(), 0.15),
                   _padded(points[:, 1].min(), points[:, 1].max(), 0.15))
    xs = np.arange(frame.x0, frame.x1, step) + step / 2
    ys = np.arange(frame.y0, frame.y1, step) + step / 2
    gx, gy = np.meshgrid(_from_pixel(xs, frame.x0, frame.x1, frame.xrange),
                         _from_pixel(ys, frame.y1, frame.y0, frame.yrange))
    classes = np.asarray(predict(np.stack([gx.ravel(), gy.ravel()], axis=1))).astype(int)
    light = 0.35 * np.array(PALETTE) + 0.65
    region = light[classes.reshape(gx.shape) % len(PALETTE)]
    region = np.kron(region, np.ones((step, step, 1)))
    x0, y0 = int(round(xs[0] - step / 2)), int(round(ys[0] - step / 2))
    h = min(region.shape[0], canvas.height - y0)
    w = min(region.shape[1], canvas.width - x0)
    canvas.pixels[y0:y0 + h, x0:x0 + w] = region[:h, :w]
    frame.axes("decision regions", "x1", ylabel="x2", integer_x=False)
    for k, (x, y) in enumerate(points):
        px, py = frame.to_pixel(x, y)
        color = PALETTE[int(labels[k]) % len(PALETTE)] if labels is not None else (0, 0, 0)
        canvas.dot(px, py, 4.5, (0, 0, 0))
        canvas.dot(px, py, 3, color)
    save_png(path, canvas.pixels)


def _from_pixel(pixels, start, end, data_range):
    """Pixel coordinates between start and end -> data coordinates in data_range."""
    return data_range[0] + (pixels - start) / (end - start) * (data_range[1] - data_range[0])
