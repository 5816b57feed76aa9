"""One local-aggregation op for the whole local-mixer family (issue #23, phase 1).

Convolution, involution, VOLO's outlook attention, SASA / neighborhood attention and
deformable convolution (DCNv1/v2/v3/v4) are points of one space: every output position ``n``
reads the values at K*K sampling positions ``pos(n, k)`` and sums them with weights.

Layouts (channels-last throughout, as the mixers use):

* ``value``: (B, H, W, C).
* ``weight``, per-position (dynamic): (B, Ho, Wo, G, K*K) - G weight groups, channel c
  belongs to group g(c) = c // (C/G) (involution: G groups; SASA: G heads; DCNv2's mask:
  G offset groups); static (broadcast over batch and positions): (G, K*K) - depthwise
  convolution is G = C, ``weight = conv.weight.view(C, K*K)``.
  With ``fold=True`` one more K*K axis: (B, Ho, Wo, G, K*K, K*K) or (G, K*K, K*K), indexed
  ``[..., k_out, k_in]``.
* ``offset`` (optional): (B, Ho, Wo, Go, K*K, 2), the last axis (dy, dx) in pixels, Go offset
  groups (channel c uses offset group c // (C/Go)); Go and G are independent (both divide C).
* taps ``k = a*K + b`` are row-major over the window (a: row, b: column).

Geometry: tap (a, b) of output position n = (i, j) samples

    boundary='zeros':  pos(n, k) = (i*S - P + a*D, j*S - P + b*D) [+ offset[n, g, k]]
    boundary='clamp':  the window of pixel (i, j) shifted to stay inside the image, as
                       neighborhood attention (NATTEN) does: per axis, with r = i mod D and
                       m = ceil((H - r) / D) pixels in i's dilation class,
                       start = clamp(i//D - K//2, 0, m - K), pos = r + D*(start + a)
                       (stride 1; padding ignored; needs m >= K for every class)

with the output grid ``Ho = floor((H + 2P - D*(K-1) - 1) / S) + 1`` (likewise Wo; for
'clamp' Ho = H) - for outlook's K = 2P+1, D = 1 this is VOLO's ceil(H/S). Values are zero
outside the image; offset positions are sampled bilinearly (each of the 4 corners outside
the image reads zero, as torchvision's ``deform_conv2d`` and ``grid_sample(padding_mode=
'zeros')`` do).

The op, with ``A = softmax_k(weight)`` for ``normalize='softmax'`` (over the K*K taps; with
``fold`` over k_in) else ``A = weight``:

    fold=False:  out[n, c] = sum_k A[n, g(c), k] * V[pos(n, k), c]                 (B, Ho, Wo, C)
    fold=True:   Y[n, k_o, c] = sum_{k_in} A[n, g(c), k_o, k_in] * V[pos(n, k_in), c]
                 out[p, c]    = sum_{(n, k_o): pos0(n, k_o) = p} Y[n, k_o, c]        (B, H, W, C)

where ``pos`` includes the offsets (``pos(n, k) = pos0(n, k) + offset[n, go(c), k]``, go(c)
= c // (C/Go)) and ``pos0`` is the fixed integer window position: with offsets and ``fold``
the K*K inputs of a window are read at the deformed positions, its K*K outputs are scattered
onto the fixed ones (outlook's fold; positions outside the image are dropped).

``fold=True`` is outlook attention (VOLO Eq. 3-5, :mod:`.outlook_attention`): logits (B, h,
w, heads*K^4) are ``weight = logits.view(B, h, w, heads, K*K, K*K)`` with ``normalize=
'softmax'``, ``padding=P``, ``stride=S`` (zeros boundary, no offsets).

Softmax runs over all K*K taps, those outside the image included (they read zero): DCNv3's
and outlook's convention. SASA as in :mod:`.local_attention` (out-of-image neighbours masked
out of the softmax) is ``local_aggregate(v, local_similarity(q, k, K).softmax(-1), K,
padding=K//2, groups=heads)``: :func:`local_similarity` returns -inf logits there.

Implementations (``impl=``): ``'reference'`` - every sample gathered into one (B, Ho, Wo, Go,
K*K, C/Go) tensor by a bilinear gather (integer positions for fixed windows), then the
weighted sum (and ``index_add`` for the fold); autograd differentiates it. ``'fast'``
(``'auto'`` on CPU, :mod:`.local_aggregate_fast`): per configuration a specialised kernel
(:mod:`.local_aggregate_kernels`: ``F.conv2d`` for static windows, shifted rectangles for
stride-1 dynamic ones, outlook's chunked kernel for its fold), else a loop over the K*K taps
per block of output rows, never more than one block's samples alive; custom ops with
hand-written backwards. The old ops (:func:`.depthwise_conv`, :func:`.involution`,
:func:`.local_attention`, :func:`.outlook_attention`) are configurations of these two ops.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

import torch

from .dispatch import ImplRegistry

OP = 'local_aggregate'
SIM_OP = 'local_similarity'
NORMALIZE = (None, 'softmax')
BOUNDARIES = ('zeros', 'clamp')


# ------------------------------------------------------------------------------------------
# Geometry
# ------------------------------------------------------------------------------------------

def check_kernel_size(op: str, kernel_size: int) -> None:
    """Require an odd window size >= 1 (a centred window keeps the input's shape)."""
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f'{op}: kernel_size must be an odd int >= 1 (centred window, '
                         f'padding K//2), got {kernel_size!r}')


def check_tokens(op: str, name: str, x: torch.Tensor) -> None:
    """Require a 4-d channels-last tensor (B, H, W, C)."""
    if x.dim() != 4:
        raise ValueError(f'{op}: {name} must be channels-last (B, H, W, C), got shape '
                         f'{tuple(x.shape)}')


class Geometry(NamedTuple):
    """Sizes and window rule of one call (see the module docstring); a named tuple (built
    on every call: cheaper than a frozen dataclass)."""

    batch: int
    height: int
    width: int
    channels: int
    kernel_size: int
    stride: int
    padding: int
    dilation: int
    boundary: str
    out_h: int
    out_w: int

    @property
    def taps(self) -> int:
        return self.kernel_size * self.kernel_size

    def tap_index(self, axis: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(idx, inside) for rows ('h') or columns ('w'): (Ho, K) int64 positions
        pos = i*S - P + a*D (or the clamped window), and whether each lies in the image."""
        size, out = (self.height, self.out_h) if axis == 'h' else (self.width, self.out_w)
        k, d = self.kernel_size, self.dilation
        i = torch.arange(out)[:, None]
        a = torch.arange(k)[None, :]
        if self.boundary == 'clamp':
            residue = i % d
            members = (size - residue + d - 1) // d
            start = (i // d - k // 2).clamp(min=0)
            start = torch.minimum(start, members - k)
            idx = residue + d * (start + a)
        else:
            idx = i * self.stride - self.padding + a * d
        return idx, (idx >= 0) & (idx < size)

    def tap_slices(self, k: int, rows: tuple[int, int] | None = None
                   ) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
        """Zeros-boundary windows: where tap k = a*K + b lies inside the image, as
        ``((out_rows, out_cols), (in_rows, in_cols))`` - the output pixels (i, j) (of output
        rows ``rows = (r0, r1)`` if given) whose tap k is inside, and the input pixels
        (i*S - P + a*D, j*S - P + b*D) they read (a slice of step S); None when none is."""
        a, b = divmod(k, self.kernel_size)
        start, stop = rows or (0, self.out_h)
        row = _axis_slices((start, min(stop, self.out_h)), a * self.dilation - self.padding,
                           self.stride, self.height)
        col = _axis_slices((0, self.out_w), b * self.dilation - self.padding, self.stride,
                           self.width)
        if row is None or col is None:
            return None
        return (row[0], col[0]), (row[1], col[1])

    def tap_windows(self, blocks: Iterable[tuple[int, int]]
                    ) -> Iterator[tuple[int, tuple[slice, slice], tuple[slice, slice]]]:
        """``(k, out_window, in_window)`` of :meth:`tap_slices` for every block of output
        rows and every tap k whose window is inside the image there."""
        for block in blocks:
            for k in range(self.taps):
                slices = self.tap_slices(k, block)
                if slices is not None:
                    yield (k, *slices)

    def padded_size(self) -> tuple[int, int]:
        """(Hp, Wp) of a zero-padded buffer, the image at offset (P, P), that holds every
        window: Hp = max((Ho - 1)*S + D*(K - 1) + 1, P + H) (likewise Wp)."""
        span = self.dilation * (self.kernel_size - 1) + 1
        return (max((self.out_h - 1) * self.stride + span, self.padding + self.height),
                max((self.out_w - 1) * self.stride + span, self.padding + self.width))

    @property
    def params(self) -> tuple[int, int, int, int, int]:
        """(K, S, P, D, boundary index): the ints a custom op is called with."""
        return (self.kernel_size, self.stride, self.padding, self.dilation,
                BOUNDARIES.index(self.boundary))


def _axis_slices(span: tuple[int, int], shift: int, stride: int,
                 size: int) -> tuple[slice, slice] | None:
    """Output indices n in [start, stop) with 0 <= n*S + shift < size, and the input
    positions they land on, as two slices; None when there are none."""
    start, stop = span
    lo = max(start, -(shift // stride))  # ceil(-shift / S)
    hi = min(stop, (size - 1 - shift) // stride + 1)
    if hi <= lo:
        return None
    return slice(lo, hi), slice(lo * stride + shift, (hi - 1) * stride + shift + 1, stride)


def geometry_of(shape: tuple[int, ...] | torch.Size, kernel_size: int, stride: int,
                padding: int, dilation: int, boundary: str | int) -> Geometry:
    """The Geometry of value shape (B, H, W, C) without validation (:func:`make_geometry`
    validates); ``boundary`` by name or index."""
    boundary = boundary if isinstance(boundary, str) else BOUNDARIES[boundary]
    batch, height, width, channels = shape
    if boundary == 'clamp':
        out_h, out_w = height, width
    else:
        span = dilation * (kernel_size - 1) + 1
        out_h = (height + 2 * padding - span) // stride + 1
        out_w = (width + 2 * padding - span) // stride + 1
    return Geometry(batch, height, width, channels, kernel_size, stride, padding, dilation,
                    boundary, out_h, out_w)


def make_geometry(op: str, value: torch.Tensor, kernel_size: int, stride: int, padding: int,
                  dilation: int, boundary: str) -> Geometry:
    """Validate the window arguments (one-line ValueErrors) and size the output grid."""
    check_tokens(op, 'value', value)
    for name, val, low in (('kernel_size', kernel_size, 1), ('stride', stride, 1),
                           ('padding', padding, 0), ('dilation', dilation, 1)):
        if not isinstance(val, int) or isinstance(val, bool) or val < low:
            raise ValueError(f'{op}: {name} must be an int >= {low}, got {val!r}')
    if boundary not in BOUNDARIES:
        raise ValueError(f"{op}: boundary must be one of {', '.join(BOUNDARIES)}; got "
                         f'{boundary!r}')
    _, height, width, _ = value.shape
    span = dilation * (kernel_size - 1) + 1
    if boundary == 'clamp':
        check_kernel_size(op, kernel_size)
        if stride != 1:
            raise ValueError(f"{op}: boundary='clamp' needs stride=1 (neighborhood attention "
                             f'keeps the grid), got stride={stride}')
        smallest = min(height, width) // dilation  # the shortest dilation class
        if smallest < kernel_size:
            raise ValueError(f"{op}: boundary='clamp' needs every dilation class of the image "
                             f'to hold a window: min(H, W) // D >= K, got H, W = {height}, '
                             f'{width}, D={dilation}, K={kernel_size}')
    geom = geometry_of(value.shape, kernel_size, stride, padding, dilation, boundary)
    if geom.out_h < 1 or geom.out_w < 1:
        raise ValueError(f'{op}: the window (K={kernel_size}, D={dilation}, span {span}) '
                         f'does not fit value {tuple(value.shape)} with padding {padding}')
    return geom


def value_shape(geom: Geometry) -> tuple[int, int, int, int]:
    return geom.batch, geom.height, geom.width, geom.channels


def _groups_of(op: str, name: str, groups: int, channels: int) -> None:
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1 \
            or channels % groups:
        raise ValueError(f'{op}: channels {channels} must divide into {name}={groups!r}')


def check_aggregate_inputs(geom: Geometry, weight: torch.Tensor, groups: int,
                           offset: torch.Tensor | None, normalize: str | None,
                           fold: bool) -> tuple[bool, int]:
    """(weight is static, offset groups Go) after one-line ValueErrors on bad arguments."""
    _groups_of(OP, 'groups', groups, geom.channels)
    if normalize not in NORMALIZE:
        raise ValueError(f"{OP}: normalize must be None or 'softmax', got {normalize!r}")
    kk = geom.taps
    tail = (groups, kk, kk) if fold else (groups, kk)
    dynamic = (geom.batch, geom.out_h, geom.out_w, *tail)
    shape = tuple(weight.shape)
    if shape not in (dynamic, tail):
        names = '(B, Ho, Wo, G, K*K, K*K)' if fold else '(B, Ho, Wo, G, K*K)'
        raise ValueError(f'{OP}: weight shape {shape} does not fit value '
                         f'{tuple(value_shape(geom))}; expected {names} = {dynamic} or '
                         f'static {tail}')
    off_groups = 0
    if offset is not None:
        if geom.boundary != 'zeros':
            raise ValueError(f"{OP}: offsets need boundary='zeros', got {geom.boundary!r}")
        head = (geom.batch, geom.out_h, geom.out_w)
        if offset.dim() != 6 or tuple(offset.shape[:3]) != head \
                or tuple(offset.shape[4:]) != (kk, 2):
            raise ValueError(f'{OP}: offset must be (B, Ho, Wo, Go, K*K, 2) = (*{head}, Go, '
                             f'{kk}, 2); got {tuple(offset.shape)}')
        off_groups = int(offset.shape[3])
        _groups_of(OP, 'offset groups Go (offset.shape[3])', off_groups, geom.channels)
    if fold and geom.boundary != 'zeros':
        raise ValueError(f"{OP}: fold=True needs boundary='zeros', got {geom.boundary!r}")
    return shape == tail, off_groups


# ------------------------------------------------------------------------------------------
# Reference
# ------------------------------------------------------------------------------------------

def bilinear_gather(value: torch.Tensor, py: torch.Tensor, px: torch.Tensor) -> torch.Tensor:
    """Samples of value (B, H, W, Go, d) at float positions py, px (B, *S, Go) -> (B, *S, Go,
    d), bilinear, each corner outside the image reading zero (differentiable)."""
    batch, height, width, groups, dim = value.shape
    flat = value.reshape(-1, dim)
    lead = py.shape
    b = torch.arange(batch, device=py.device).view(batch, *([1] * (len(lead) - 1)))
    g = torch.arange(groups, device=py.device)
    y0, x0 = py.floor(), px.floor()
    # each corner row / column clamped once (clamping one tensor twice made onnxscript's
    # optimizer write an invalid ONNX model)
    rows = [((cy >= 0) & (cy < height), cy.clamp(0, height - 1).long(), wy)
            for cy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0))]
    cols = [((cx >= 0) & (cx < width), cx.clamp(0, width - 1).long(), wx)
            for cx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0))]
    out = 0
    for in_y, yi, wy in rows:
        for in_x, xi, wx in cols:
            idx = ((b * height + yi) * width + xi) * groups + g
            out = out + (wy * wx * (in_y & in_x))[..., None] * flat[idx]
    return out


def reference_samples(value: torch.Tensor, geom: Geometry, offset: torch.Tensor | None,
                      groups: int) -> torch.Tensor:
    """Every sample: (B, Ho, Wo, Go, K*K, C/Go), Go = offset groups (or ``groups``)."""
    rows, _ = geom.tap_index('h')  # (Ho, K)
    cols, _ = geom.tap_index('w')  # (Wo, K)
    k, dtype = geom.kernel_size, value.dtype
    py = rows[:, None, :, None].expand(-1, geom.out_w, k, k).reshape(geom.out_h, geom.out_w, -1)
    px = cols[None, :, None, :].expand(geom.out_h, -1, k, k).reshape(geom.out_h, geom.out_w, -1)
    shape = (geom.batch, geom.out_h, geom.out_w, geom.taps, groups)
    py = py.to(dtype)[None, :, :, :, None].expand(shape)  # (B, Ho, Wo, K*K, Go)
    px = px.to(dtype)[None, :, :, :, None].expand(shape)
    if offset is not None:
        py = py + offset[..., 0].transpose(3, 4).to(dtype)
        px = px + offset[..., 1].transpose(3, 4).to(dtype)
    v = value.unflatten(-1, (groups, geom.channels // groups))
    return bilinear_gather(v, py, px).transpose(3, 4)


def _repeat_groups(a: torch.Tensor, groups: int, channels: int,
                   fold: bool = False) -> torch.Tensor:
    """Weights (..., G, K*K[, K*K]) -> (..., C, K*K[, K*K]): each group's row C/G times."""
    dim = a.dim() - (3 if fold else 2)
    return a.repeat_interleave(channels // groups, dim=dim)


def local_aggregate_reference(value: torch.Tensor, weight: torch.Tensor, geom: Geometry,
                              groups: int, offset: torch.Tensor | None,
                              normalize: str | None, fold: bool) -> torch.Tensor:
    """The module docstring's formula with all samples materialised (ground truth)."""
    channels = geom.channels
    off_groups = groups if offset is None else offset.shape[3]
    samples = reference_samples(value, geom, offset, off_groups)  # (B, Ho, Wo, Go, KK, d)
    samples = samples.movedim(-2, -1).reshape(*samples.shape[:3], channels, geom.taps)
    attn = weight.softmax(dim=-1) if normalize == 'softmax' else weight
    attn = _repeat_groups(attn.to(samples.dtype), groups, channels, fold)
    if not fold:
        return (attn * samples).sum(-1)  # (B, Ho, Wo, C)
    y = (attn @ samples[..., None]).squeeze(-1)  # (B, Ho, Wo, C, K*K): k_out
    rows, row_in = geom.tap_index('h')
    cols, col_in = geom.tap_index('w')
    pos = (rows.clamp(0, geom.height - 1)[:, None, :, None] * geom.width
           + cols.clamp(0, geom.width - 1)[None, :, None, :])  # (Ho, Wo, K, K)
    keep = (row_in[:, None, :, None] & col_in[None, :, None, :]).reshape(-1)
    y = y.movedim(-1, 3).reshape(geom.batch, -1, channels)[:, keep]
    out = y.new_zeros(geom.batch, geom.height * geom.width, channels)
    out = out.index_add(1, pos.reshape(-1)[keep], y)
    return out.view(geom.batch, geom.height, geom.width, channels)


# ------------------------------------------------------------------------------------------
# Public functions
# ------------------------------------------------------------------------------------------

def local_aggregate(value: torch.Tensor, weight: torch.Tensor, kernel_size: int,
                    stride: int = 1, padding: int = 0, dilation: int = 1, groups: int = 1,
                    offset: torch.Tensor | None = None, normalize: str | None = None,
                    fold: bool = False, boundary: str = 'zeros',
                    impl: str | None = None) -> torch.Tensor:
    """Weighted aggregation over (possibly deformed) KxK windows; module docstring: formula.

    Args:
        value: (B, H, W, C).
        weight: (B, Ho, Wo, G, K*K) per position, or (G, K*K) static; with ``fold`` one more
            trailing K*K axis (``[k_out, k_in]``).
        kernel_size, stride, padding, dilation: the window K, S, P, D.
        groups: G, the weight groups (C divisible by G; depthwise conv: G = C).
        offset: None, or (B, Ho, Wo, Go, K*K, 2) sampling offsets (dy, dx) in pixels.
        normalize: None, or 'softmax' over the K*K taps (k_in with ``fold``).
        fold: scatter each window's K*K outputs back onto the input grid (outlook).
        boundary: 'zeros' (zero padding) or 'clamp' (windows kept inside the image).
        impl: 'auto' (= 'fast', the default), 'fast', 'reference' or 'triton' (opt-in; CUDA,
            or CPU under TRITON_INTERPRET=1) (:mod:`.dispatch`).

    Returns:
        (B, Ho, Wo, C), or (B, H, W, C) with ``fold``; dtype of ``value``.
    """
    LOCAL_AGGREGATE_IMPLS.check_name(impl)
    geom = make_geometry(OP, value, kernel_size, stride, padding, dilation, boundary)
    static, _ = check_aggregate_inputs(geom, weight, groups, offset, normalize, fold)
    name = LOCAL_AGGREGATE_IMPLS.select(value, weight, impl=impl)
    return LOCAL_AGGREGATE_IMPLS.run(name)(value, weight, geom, groups, offset, normalize,
                                           fold, static)


def local_similarity(query: torch.Tensor, key: torch.Tensor, kernel_size: int,
                     dilation: int = 1, boundary: str = 'zeros', scale: float | None = None,
                     groups: int = 1, impl: str | None = None) -> torch.Tensor:
    """Logits ``q[p] . k[pos(p, k)]`` per group (head) over centred KxK windows.

        logit[p, g, k] = scale * sum_{c in g} query[p, c] * key[pos(p, k), c]

    with pos as in :func:`local_aggregate` for stride 1, padding D*(K-1)/2 (K odd), so the
    grid is the input's. ``boundary='zeros'``: taps outside the image get -inf (masked out of
    a following softmax, as :func:`.local_attention` does); 'clamp': neighborhood attention's
    shifted windows (no tap outside).

    Args:
        query, key: (B, H, W, C).
        kernel_size: K, odd. dilation: D.
        boundary: 'zeros' or 'clamp'.
        scale: multiplies the dot products; None = (C/G)**-0.5 (pass 1.0 for pre-scaled q).
        groups: G heads, C divisible by G.
        impl: 'auto' (= 'fast'), 'fast' or 'reference'.

    Returns:
        (B, H, W, G, K*K) logits in query's dtype, the layout of ``local_aggregate``'s weight.
    """
    LOCAL_SIMILARITY_IMPLS.check_name(impl)
    check_tokens(SIM_OP, 'query', query)
    check_kernel_size(SIM_OP, kernel_size)
    if not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f'{SIM_OP}: dilation must be an int >= 1, got {dilation!r}')
    if key.shape != query.shape:
        raise ValueError(f'{SIM_OP}: key must have the shape of query (B, H, W, C) = '
                         f'{tuple(query.shape)}; got {tuple(key.shape)}')
    geom = make_geometry(SIM_OP, key, kernel_size, 1, dilation * (kernel_size // 2), dilation,
                         boundary)
    _groups_of(SIM_OP, 'groups', groups, geom.channels)
    scale = (geom.channels // groups) ** -0.5 if scale is None else float(scale)
    name = LOCAL_SIMILARITY_IMPLS.select(query, key, impl=impl)
    return LOCAL_SIMILARITY_IMPLS.run(name)(query, key, geom, groups, scale)


def _similarity_reference(query: torch.Tensor, key: torch.Tensor, geom: Geometry, groups: int,
                          scale: float) -> torch.Tensor:
    samples = reference_samples(key, geom, None, groups)  # (B, H, W, G, K*K, d)
    q = query.unflatten(-1, (groups, geom.channels // groups)).to(samples.dtype)
    logits = (samples * q[..., None, :]).sum(-1) * scale
    return logits.masked_fill(~similarity_mask(geom), float('-inf')).to(query.dtype)


def _similarity_fast(*args: object) -> torch.Tensor:
    return _fast.local_similarity_fast(*args)


def _aggregate_reference(value: torch.Tensor, weight: torch.Tensor, geom: Geometry,
                         groups: int, offset: torch.Tensor | None, normalize: str | None,
                         fold: bool, static: bool) -> torch.Tensor:
    out = local_aggregate_reference(value, weight, geom, groups, offset, normalize, fold)
    return out.to(value.dtype)


def _aggregate_fast(*args: object) -> torch.Tensor:
    return _fast.local_aggregate_fast(*args)


#: The implementations of the two ops (:mod:`.dispatch`): 'fast' is the 'auto' choice.
LOCAL_AGGREGATE_IMPLS = ImplRegistry(OP)
LOCAL_AGGREGATE_IMPLS.register('reference')(_aggregate_reference)
LOCAL_AGGREGATE_IMPLS.register('fast', priority=10)(_aggregate_fast)
LOCAL_SIMILARITY_IMPLS = ImplRegistry(SIM_OP)
LOCAL_SIMILARITY_IMPLS.register('reference')(_similarity_reference)
LOCAL_SIMILARITY_IMPLS.register('fast', priority=10)(_similarity_fast)


def similarity_mask(geom: Geometry) -> torch.Tensor:
    """Bool (H, W, 1, K*K): True where tap k of pixel p lies inside the image."""
    _, row_in = geom.tap_index('h')
    _, col_in = geom.tap_index('w')
    inside = row_in[:, None, :, None] & col_in[None, :, None, :]
    return inside.reshape(geom.out_h, geom.out_w, 1, geom.taps)


__all__ = ['local_aggregate', 'local_similarity', 'local_aggregate_reference', 'Geometry',
           'make_geometry', 'geometry_of', 'bilinear_gather', 'check_tokens',
           'check_kernel_size']

# last: the fast path imports this module's names
from . import local_aggregate_fast as _fast  # noqa: E402
