"""A classical (weight-free) alpha matte of a portrait subject from a box around it.

This is a stand-in for MODNet, used when MODNet's published weights are absent: they are not
shipped with the product (users bring them), yet the demo still needs a believable matte to feed
blending and harmonization. Without learned weights, the knowledge available is what a user can
give cheaply -- a box around the subject -- plus the image's colours and edges, so the method is
a GrabCut-style segmentation built from numpy, scipy and scikit-image (no OpenCV):

1. Colour models. Pixels outside the box are background by definition; the box interior starts as
   foreground. A small Gaussian mixture in CIE Lab is fitted to each side, and a pixel's negative
   log-likelihood under each mixture is its cost of taking that label.
2. Graph cut. A minimum s-t cut (``scipy.sparse.csgraph.maximum_flow``) trades those colour costs
   against a contrast-sensitive smoothness cost between neighbours, so the outline runs along image
   edges. A shape prior makes the subject star-shaped about the box's vertical centre line (see
   ``_star_links``): subject parts whose colours also occur in the background (a dark collar, a
   white strap) stay in as long as subject lies beyond them. Fitting and cutting alternate a few
   times, as in GrabCut, at no more than 256 pixels on the long side for speed; a last cut at full
   resolution, in a narrow band around that outline, puts the edge on the right pixel.
3. Clean-up and feathering. Holes are filled (a box reaching the frame's bottom counts the bottom
   edge as subject, since a portrait's body continues below the frame), stray islands dropped, the
   outline smoothed, and the binary mask given a soft edge a couple of pixels wide.

The result is a hard segmentation with a soft edge, not a true matte: hair strands get a ramp of a
few pixels rather than a per-pixel opacity, and an object the subject holds is kept only where its
colours look like the subject's. It assumes an upright subject roughly centred in its box.
A 512x512 image takes about 2-3 s on one CPU core, most of it in ``maximum_flow``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import breadth_first_order, maximum_flow

# The box for ``skimage.data.astronaut()`` (512x512): Eileen Collins from just above her hair down
# to the frame's bottom, both sleeves included. The space shuttle model on the right stays outside,
# and so does a strip of the flag on the left, which teaches the background model the flag's
# colours. The helmet she holds crosses the right edge; its colours match the background outside
# the box (the helmet's other half, the black table), so the cut leaves it out.
ASTRONAUT_BOX: tuple[int, int, int, int] = (12, 4, 372, 512)

# The GrabCut iterations run at no more than this many pixels on the long side: the colour models
# and the rough outline do not need more, and the max-flow cost grows faster than the pixel count.
_COARSE_SIDE = 256
_ITERATIONS = 5
_COMPONENTS = 5  # mixture components per side: enough for a suit, a face, hair and a flag
_SAMPLES = 20_000  # pixels per side used to fit a mixture; the fit does not improve with more
_GAMMA = 80.0  # smoothness weight (GrabCut uses 50; more keeps thin light parts such as a strap)
_FLOW_SCALE = 16.0  # maximum_flow needs integer capacities; this keeps ~0.06 nats of precision
# A capacity no cut affords: a hard constraint. Much larger ones overflow maximum_flow's int32 sums
# (thousands of hard links can meet at one node).
_HARD = 1 << 20
# The shape prior's axis: the box's vertical centre line from this fraction of the box's height
# down to its bottom. In a head-and-shoulders box that line runs from the face through the neck
# and chest, which are subject in every portrait.
_AXIS_TOP = 0.25
_STAR_STEP = 4.0  # length of a shape-prior link, in coarse pixels (see _star_links)
_BAND = 4  # half width, in coarse pixels, of the full-resolution refinement band
_MIN_COARSE_BOX = 256  # fewer coarse pixels in the box than this: work at full resolution

# The 8-connected neighbour pairs of a grid as (slice of a, slice of b, distance a-b).
_ALL, _HEAD, _TAIL = slice(None), slice(None, -1), slice(1, None)
_NEIGHBOURS = (
    ((_ALL, _HEAD), (_ALL, _TAIL), 1.0),
    ((_HEAD, _ALL), (_TAIL, _ALL), 1.0),
    ((_HEAD, _HEAD), (_TAIL, _TAIL), 2.0**0.5),
    ((_HEAD, _TAIL), (_TAIL, _HEAD), 2.0**0.5),
)


def box_matte(
    image: np.ndarray, box: tuple[int, int, int, int], feather_px: float = 2.0
) -> np.ndarray:
    """Segment the subject inside ``box`` and return it as a soft alpha matte.

    Args:
        image: uint8 RGB image, shape ``[H, W, 3]``.
        box: ``(left, top, right, bottom)`` in pixels, right and bottom exclusive; it must lie
            inside the image and have a positive width and height. It should contain the whole
            subject and as little else as possible: nothing outside it can be foreground, and
            colours seen only inside it count as subject, so where background lies beside the
            subject the box should leave some of it outside (not run along the frame's edge). The
            subject should stand upright and roughly centred in it, its middle covering the box's
            vertical centre line from a quarter of the way down (the face, neck and chest of a
            head-and-shoulders box).
        feather_px: width in pixels of the matte's soft edge, which lies just inside the subject's
            outline; 0 gives a binary matte.

    Returns:
        uint8 matte of shape ``[H, W, 1]``: 255 on the subject, 0 on the background and
        everywhere outside ``box``, intermediate values along the subject's edge.

    Raises:
        ValueError: if the image is not uint8 ``[H, W, 3]``, the box is not four integers inside
            the image with a positive size, or ``feather_px`` is negative.
    """
    # scikit-image takes a second to import; only the matte itself needs it.
    from skimage import color
    from skimage.transform import downscale_local_mean

    image = _check_image(image)
    height, width = image.shape[:2]
    left, top, right, bottom = _check_box(box, width, height)
    if not isinstance(feather_px, (int, float, np.number)) or not 0 <= feather_px < np.inf:
        raise ValueError(f"feather_px must be a finite number >= 0, got {feather_px!r}")

    in_box = np.zeros((height, width), bool)
    in_box[top:bottom, left:right] = True
    lab = color.rgb2lab(image)

    # GrabCut at coarse resolution: alternate colour-model fits and graph cuts. Block means keep
    # an exact pixel correspondence between the two resolutions (padding makes the blocks fit).
    factor = max(1, -(-max(height, width) // _COARSE_SIDE))
    if (right - left) * (bottom - top) < _MIN_COARSE_BOX * factor * factor:
        factor = 1  # a small box: full resolution is cheap, and blocks would blur the subject away
    pad = ((0, -height % factor), (0, -width % factor))
    coarse_lab = downscale_local_mean(np.pad(lab, pad + ((0, 0),), mode="edge"), (factor, factor, 1))
    # A coarse pixel may be foreground only if its whole block lies inside the box.
    coarse_in_box = downscale_local_mean(np.pad(in_box, pad).astype(float), (factor, factor)) == 1.0
    axis_col = (left + right - 1) / 2
    axis_top = top + _AXIS_TOP * (bottom - top)
    coarse_links = _star_links(
        coarse_lab.shape[:2],
        (axis_col + 0.5) / factor - 0.5,  # pixel-centre coordinates at the coarse scale
        (axis_top + 0.5) / factor - 0.5,
        _STAR_STEP,
    )
    graph = _Graph(coarse_lab, coarse_links)
    rng = np.random.default_rng(0)  # fixed seed: the same image always gives the same matte
    foreground = _initial_foreground(coarse_in_box)
    no_fixed_fg = np.zeros_like(foreground)
    for _ in range(_ITERATIONS):
        models = _fit_models(coarse_lab, foreground, rng)
        cost_fg, cost_bg = _colour_costs(coarse_lab, models)
        updated = graph.cut(cost_fg, cost_bg, free=coarse_in_box, fixed_fg=no_fixed_fg)
        converged = np.array_equal(updated, foreground)
        foreground = updated
        if converged or not foreground.any():
            break
    if not foreground.any():  # nothing in the box looks different from the background
        return np.zeros((height, width, 1), np.uint8)

    # Full resolution: re-cut only a narrow band around the coarse outline, with the last models.
    if factor > 1:
        rough = np.repeat(np.repeat(foreground, factor, 0), factor, 1)[:height, :width]
        reach = _BAND * factor
        band = ndimage.binary_dilation(rough, iterations=reach) & ~ndimage.binary_erosion(
            rough, iterations=reach, border_value=1
        )
        band &= in_box
        cost_fg, cost_bg = _colour_costs(lab, models)
        fine_links = _star_links((height, width), axis_col, axis_top, _STAR_STEP * factor)
        fine_graph = _Graph(lab, fine_links)
        foreground = fine_graph.cut(cost_fg, cost_bg, free=band, fixed_fg=rough & ~band)

    mask = _clean(foreground, in_box, bottom == height)
    return _feather(mask, in_box, feather_px)


# --- Validation ---------------------------------------------------------------------------------


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got dtype {image.dtype}")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        raise ValueError(
            f"image is grayscale (shape {image.shape}); the colour models need an RGB image of "
            "shape [H, W, 3]"
        )
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be an RGB image of shape [H, W, 3], got shape {image.shape}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ValueError(f"image must be at least 2x2 pixels, got shape {image.shape}")
    return image


def _check_box(box, width: int, height: int) -> tuple[int, int, int, int]:
    try:
        values = tuple(box)
    except TypeError:
        raise ValueError(f"box must be (left, top, right, bottom), got {box!r}") from None
    if len(values) != 4 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"box must be four integers (left, top, right, bottom), got {box!r}")
    left, top, right, bottom = (int(v) for v in values)
    if right <= left or bottom <= top:
        raise ValueError(
            f"box must have a positive size (right > left and bottom > top), got {values}"
        )
    if left < 0 or top < 0 or right > width or bottom > height:
        raise ValueError(
            f"box {values} lies outside the {width}x{height} image "
            f"(need 0 <= left < right <= {width} and 0 <= top < bottom <= {height})"
        )
    return left, top, right, bottom


# --- Colour models ------------------------------------------------------------------------------


def _initial_foreground(in_box: np.ndarray) -> np.ndarray:
    """GrabCut's starting labels: the box is foreground, the rest background.

    A box covering the whole image leaves no background to learn from; its outermost 5% (at
    least a pixel) then stands in for it at the start, as a photo's edges are mostly background.
    """
    if not in_box.all():
        return in_box.copy()
    margin = max(1, round(0.05 * min(in_box.shape)))
    inner = np.zeros_like(in_box)
    inner[margin:-margin, margin:-margin] = True
    return inner if inner.any() else in_box.copy()


def _fit_models(lab: np.ndarray, foreground: np.ndarray, rng: np.random.Generator):
    """Gaussian mixtures for the current foreground and background, fitted on a pixel sample."""
    pixels = lab.reshape(-1, 3)
    labels = foreground.ravel()
    models = []
    for side in (labels, ~labels):
        samples = pixels[side]
        if len(samples) > _SAMPLES:
            samples = samples[rng.choice(len(samples), _SAMPLES, replace=False)]
        models.append(_fit_mixture(samples, rng))
    return models


def _fit_mixture(samples: np.ndarray, rng: np.random.Generator):
    """Hard-assignment Gaussian mixture: k-means clusters, each with its own full covariance.

    GrabCut itself fits its mixtures this way; the EM refinement of soft assignments changes the
    segmentation little and would cost several passes over the samples.
    """
    if len(samples) == 0:  # no pixels on this side (a box over a tiny image): a vague model
        return [(1.0, np.array([50.0, 0.0, 0.0]), np.eye(3) * 1000.0)]
    k = min(_COMPONENTS, len(samples))
    assignment = _kmeans(samples, k, rng)
    components = []
    for j in range(int(assignment.max()) + 1):
        members = samples[assignment == j]
        if len(members) < 4:  # too few to estimate a covariance
            continue
        # The ridge keeps nearly flat clusters (a uniform backdrop) from giving huge likelihoods.
        covariance = np.cov(members.T) + np.eye(3)
        components.append((len(members) / len(samples), members.mean(0), covariance))
    if not components:  # a degenerate side (a handful of pixels): one broad Gaussian
        components.append((1.0, samples.mean(0), np.eye(3) * 100.0))
    return components


def _kmeans(samples: np.ndarray, k: int, rng: np.random.Generator, rounds: int = 8) -> np.ndarray:
    """Cluster labels from k-means++ seeding and a few Lloyd rounds."""
    centres = [samples[rng.integers(len(samples))]]
    distance = ((samples - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = distance.sum()
        if total <= 0:  # fewer distinct colours than clusters
            break
        centres.append(samples[rng.choice(len(samples), p=distance / total)])
        distance = np.minimum(distance, ((samples - centres[-1]) ** 2).sum(1))
    centres = np.array(centres)
    for _ in range(rounds):
        assignment = ((samples[:, None, :] - centres[None]) ** 2).sum(2).argmin(1)
        for j in range(len(centres)):
            members = samples[assignment == j]
            if len(members):
                centres[j] = members.mean(0)
    return assignment


def _colour_costs(lab: np.ndarray, models) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel negative log-likelihood under the foreground and background mixtures."""
    pixels = lab.reshape(-1, 3)
    costs = []
    for components in models:
        log_terms = []
        for weight, mean, covariance in components:
            precision_factor = np.linalg.cholesky(np.linalg.inv(covariance))
            whitened = (pixels - mean) @ precision_factor
            _, log_det = np.linalg.slogdet(covariance)
            log_terms.append(
                np.log(weight) - 0.5 * (log_det + (whitened**2).sum(1) + 3 * np.log(2 * np.pi))
            )
        log_terms = np.stack(log_terms, 1)
        peak = log_terms.max(1)
        costs.append(-(peak + np.log(np.exp(log_terms - peak[:, None]).sum(1))))
    shape = lab.shape[:2]
    return costs[0].reshape(shape), costs[1].reshape(shape)


# --- Graph cut ----------------------------------------------------------------------------------


class _Graph:
    """The pixel grid's smoothness edges and star-shape edges, ready for repeated cuts."""

    def __init__(self, lab: np.ndarray, star_next: np.ndarray):
        height, width = lab.shape[:2]
        self.shape = (height, width)
        index = np.arange(height * width).reshape(height, width)
        # 8-connected neighbours; diagonal edges are weighted down by their length, as in GrabCut.
        pairs, squared = [], []
        for a, b, length in _NEIGHBOURS:
            pairs.append((index[a].ravel(), index[b].ravel(), length))
            squared.append(((lab[a] - lab[b]) ** 2).sum(-1).ravel())
        # Contrast sensitivity adapts to the image: beta is set from its mean colour difference.
        beta = 1.0 / (2.0 * max(np.mean(np.concatenate(squared)), 1e-6))
        self.a = np.concatenate([p[0] for p in pairs])
        self.b = np.concatenate([p[1] for p in pairs])
        self.weight = np.concatenate(
            [_GAMMA / p[2] * np.exp(-beta * q) for p, q in zip(pairs, squared)]
        )
        self.star_next = star_next

    def cut(self, cost_fg, cost_bg, free, fixed_fg) -> np.ndarray:
        """Minimum-cost labelling of the ``free`` pixels; the others keep ``fixed_fg``'s labels."""
        n_pixels = self.shape[0] * self.shape[1]
        free = free.ravel()
        fixed_fg = fixed_fg.ravel() & ~free
        node = np.full(n_pixels, -1)
        node[free] = np.arange(free.sum())
        n = int(free.sum())
        source, sink = n, n + 1
        # The costs of labelling each free pixel foreground / background (shifted below so that
        # the smaller is 0, as capacities must be >= 0).
        to_sink = cost_fg.ravel()[free].copy()  # paid when the pixel is foreground (source side)
        to_source = cost_bg.ravel()[free].copy()  # paid when it is background
        rows, cols, caps = [], [], []

        free_a, free_b = free[self.a], free[self.b]
        both = free_a & free_b
        rows += [node[self.a[both]], node[self.b[both]]]
        cols += [node[self.b[both]], node[self.a[both]]]
        caps += [self.weight[both], self.weight[both]]
        # An edge from a free pixel to a fixed one is a constant cost for one of its labels.
        for mine, other, keep in ((self.a, self.b, free_a & ~free_b), (self.b, self.a, free_b & ~free_a)):
            other_fg = fixed_fg[other[keep]]
            np.add.at(to_source, node[mine[keep]][other_fg], self.weight[keep][other_fg])
            np.add.at(to_sink, node[mine[keep]][~other_fg], self.weight[keep][~other_fg])

        # Star constraints: an infinite edge p -> next(p) forbids p foreground with next(p) not.
        star_next = self.star_next[free]
        # A pixel on the axis links to itself: no constraint.
        next_free = free[star_next] & (star_next != np.flatnonzero(free))
        rows.append(np.arange(n)[next_free])
        cols.append(node[star_next[next_free]])
        caps.append(np.full(int(next_free.sum()), float(_HARD)))
        next_bg = ~free[star_next] & ~fixed_fg[star_next]
        to_sink[next_bg] = _HARD

        low = np.minimum(to_sink, to_source)
        rows += [np.full(n, source), np.arange(n)]
        cols += [np.arange(n), np.full(n, sink)]
        caps += [to_source - low, to_sink - low]

        capacity = np.minimum(np.rint(np.concatenate(caps) * _FLOW_SCALE), _HARD)
        positive = capacity > 0
        graph = csr_matrix(
            (capacity[positive].astype(np.int32),
             (np.concatenate(rows)[positive], np.concatenate(cols)[positive])),
            shape=(n + 2, n + 2),
        )
        flow = maximum_flow(graph, source, sink, method="dinic").flow
        # The source side of the minimum cut is what the source still reaches in the residual graph.
        residual = (graph - flow).tocsr()
        residual.data = (residual.data > 0).astype(np.int8)
        residual.eliminate_zeros()
        reached = breadth_first_order(residual, source, directed=True, return_predecessors=False)
        source_side = np.zeros(n + 2, bool)
        source_side[reached] = True
        labels = fixed_fg.copy()
        labels[free] = source_side[:n]
        return labels.reshape(self.shape)


def _star_links(shape: tuple[int, int], axis_col: float, top_row: float, step: float) -> np.ndarray:
    """Each pixel's link target for the shape prior (flat indices; a pixel on the axis -> itself).

    The prior makes the subject star-shaped about a vertical axis segment: a foreground pixel
    forces the pixels on the straight line to the segment's nearest point to be foreground as
    well. Below the segment's top that line is horizontal, so each row of the subject is an
    interval around the axis (a collar or strap between suit and chest stays in); above it the
    lines converge on the top point, which lies in the face, so the hair is tied to the face. A
    single centre point would not do: a line from the hair to a point on the chest crosses the
    background beside the neck.

    A link spans ``step`` pixels rather than one: a chain of one-pixel links re-aims at the target
    after every pixel and bends far off the straight line (a pixel 6:1 off the vertical would
    first walk straight down), whereas longer links keep it within about a pixel of the line.
    """
    height, width = shape
    rows, cols = np.mgrid[0:height, 0:width].astype(float)
    target_row = np.maximum(rows, top_row)
    d_row, d_col = target_row - rows, axis_col - cols
    distance = np.hypot(d_row, d_col)
    fraction = np.minimum(distance, step) / np.maximum(distance, 1e-9)
    next_row = np.clip(np.rint(rows + fraction * d_row), 0, height - 1).astype(int)
    next_col = np.clip(np.rint(cols + fraction * d_col), 0, width - 1).astype(int)
    return (next_row * width + next_col).ravel()


# --- Clean-up and feathering --------------------------------------------------------------------


def _clean(foreground: np.ndarray, in_box: np.ndarray, open_bottom: bool) -> np.ndarray:
    """Fill holes, keep the main region and smooth its outline."""
    mask = foreground & in_box
    if open_bottom:
        # A portrait's body continues below the frame: count the bottom edge as subject so a gap
        # between the subject and the frame's edge (a glove, a held object) is filled as a hole.
        padded = np.pad(mask, ((0, 1), (0, 0)), constant_values=True)
        mask = ndimage.binary_fill_holes(padded)[:-1]
    else:
        mask = ndimage.binary_fill_holes(mask)
    labels, count = ndimage.label(mask)
    if count > 1:  # stray specks of subject colour in the background
        sizes = np.bincount(labels.ravel())[1:]
        mask = labels == 1 + int(np.argmax(sizes))
    # Smoothing the outline removes the cut's staircase and one-pixel spurs.
    mask = ndimage.gaussian_filter(mask.astype(np.float32), 1.5) > 0.5
    return mask & in_box


def _feather(mask: np.ndarray, in_box: np.ndarray, feather_px: float) -> np.ndarray:
    """Soften the binary mask into an alpha ramp ``feather_px`` wide just inside its outline.

    Alpha rises smoothly (smoothstep) from 0 at the outline to 1 at ``feather_px`` inside it,
    by each pixel's distance to the outline. A ramp centred on the outline would put a band of
    semi-opaque background around the subject, a visible light or dark fringe on a new background;
    the outermost subject pixels already mix in some background colour, so they fade instead.
    """
    if feather_px == 0:
        alpha = mask.astype(np.float64)
    else:
        # Distance from each subject pixel's centre to the outline (the pixel edges around it).
        depth = ndimage.distance_transform_edt(mask) - 0.5
        t = np.clip(depth / feather_px, 0.0, 1.0)
        alpha = np.where(mask, t * t * (3 - 2 * t), 0.0)
    alpha = np.where(in_box, alpha, 0.0)
    return np.rint(alpha * 255).astype(np.uint8)[..., None]
