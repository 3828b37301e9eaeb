"""The language's semantics as Triton device functions, called by every generated triton kernel
(`from attnspec.runtime import kernel as _kernel`; `_kernel.floordiv(a, b)` in a kernel).

What the language defines and Triton does not compute that way by itself: floor division and
modulo with a // 0 = 0 and a % 0 = a (language.md section 4; Triton's integer division truncates),
integer and float powers, tanh and softplus without cancellation or overflow, and the conversions the
interpreter needs. One implementation, imported rather than copied into every generated module.
"""

import triton
import triton.language as tl


@triton.jit
def _both_zero(a, b):
    return tl.where(a == 0, b, 1) == 0  # not (a == 0) & (b == 0): either may be a constant


@triton.jit
def minimum(a, b):
    """The language's min (IEEE 754-2019 minimum): NaN if either is NaN, -0.0 below 0.0. tl.minimum
    alone returns the other operand for a NaN on a GPU, and either zero for the pair 0.0, -0.0."""
    # for two zeros, (a * b) * (a + b) is -0.0 if either is: the product's sign is the signs' xor, the
    # sum's their and. Negating (-((-a) + (-b))) would not do: a constant's -0.0 becomes +0.0 in Triton.
    either_negative = (a * b) * (a + b)
    return tl.where(_both_zero(a, b), either_negative, tl.minimum(a, b, propagate_nan=tl.PropagateNan.ALL))


@triton.jit
def maximum(a, b):
    """The language's max: NaN if either is NaN, 0.0 above -0.0 (for two zeros, a + b)."""
    return tl.where(_both_zero(a, b), a + b, tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL))


@triton.jit
def negative_zero():
    """-0.0: Triton turns every constant equal to 0 into +0.0, and its unary minus computes 0 - x."""
    return tl.zeros((), tl.float32) * -1.0


@triton.jit
def clamp(x, lo, hi):
    return minimum(maximum(x, lo), hi)


@triton.jit
def relu(x):
    return maximum(x, 0)


@triton.jit
def truth(x):
    return x != 0


@triton.jit
def as_float(x):
    return tl.cast(x, tl.float32)  # tl.cast also takes a plain scalar argument (x.to does not)


@triton.jit
def floordiv(a, b):
    """Python's a // b on integers (Triton's division truncates toward zero)."""
    quotient = a // b
    return tl.where(((a % b) != 0) & ((a < 0) != (b < 0)), quotient - 1, quotient)


@triton.jit
def floormod(a, b):
    """Python's a % b on integers: the result has the sign of the divisor."""
    rest = a % b
    return tl.where((rest != 0) & ((rest < 0) != (b < 0)), rest + b, rest)


@triton.jit
def floordiv_or_zero(a, b):
    """a // b, and 0 where b == 0 (language.md section 4: never a fault, on every target)."""
    return tl.where(b == 0, 0, floordiv(a, tl.where(b == 0, 1, b)))


@triton.jit
def floormod_or_zero(a, b):
    """a % b, and a where b == 0, so that a == (a // b) * b + a % b."""
    return tl.where(b == 0, a, floormod(a, tl.where(b == 0, 1, b)))


@triton.jit
def ceildiv(a, b):
    """The ceiling of a / b on integers, 0 where b == 0 (as a // 0). Triton's division truncates
    toward zero, so the ceiling is one more where the quotient is positive and not exact (written
    without negating a, which overflows for the most negative value)."""
    divisor = tl.where(b == 0, 1, b)
    up = ((a % divisor) != 0) & ((a < 0) == (divisor < 0))
    return tl.where(b == 0, 0, a // divisor + tl.where(up, 1, 0))


@triton.jit
def ilog2(x):
    """floor(log2(x)) for x >= 1, -1 for x <= 0: exact, by a binary search over 64 bits."""
    y = tl.cast(x, tl.int64)
    result = tl.cast(0, tl.int64) * y
    for step in tl.static_range(6):
        high = y >= (tl.cast(1, tl.int64) << (32 >> step))
        result = result + tl.where(high, 32 >> step, 0)
        y = tl.where(high, y >> (32 >> step), y)
    return tl.where(x >= 1, result, -1)


@triton.jit
def pow2(n):
    """2 ** n as a 64-bit integer, 0 for n < 0 (n > 62 overflows, as the reference's shift by at most 63)."""
    shift = tl.cast(tl.minimum(tl.maximum(n, 0), 63), tl.int64)
    return tl.where(n < 0, 0, tl.cast(1, tl.int64) << shift)


@triton.jit
def floordiv_float(a, b):
    return tl.floor(a / b)


@triton.jit
def floormod_float(a, b):
    return a - tl.floor(a / b) * b


@triton.jit
def powi(x, N: tl.constexpr):
    """x ** N for a constant N >= 0, by repeated products (exact signs for negative x)."""
    y = as_float(x)
    result = tl.where(y == y, 1.0, 1.0)
    for _ in tl.static_range(N):
        result = result * y
    return result


@triton.jit
def powf(x, y):
    """x ** y for a non-constant or non-integer y: NaN for x < 0, as torch.pow with a fractional y."""
    return tl.where(y == 0, 1.0, tl.exp2(y * tl.log2(as_float(x))))


@triton.jit
def tanh(x):
    """tanh as a rational function: odd of degree 13 over even of degree 6 (Eigen's float coefficients),
    x clamped into +-7.905 (where tanh rounds to 1 in float32), x itself below 4e-4. One division per
    call where the exponential form takes an exponential and a division (both on the special-function
    units, which soft-capping keeps busy beside the softmax's exponential): within 6 ulp of tanh in
    float32 against 9 for that form, NaN kept, -0.0 kept."""
    x = as_float(x)
    c = tl.minimum(tl.maximum(x, -7.90531110763549805, propagate_nan=tl.PropagateNan.ALL), 7.90531110763549805,
                   propagate_nan=tl.PropagateNan.ALL)
    c2 = c * c
    p = -2.76076847742355e-16
    p = p * c2 + 2.00018790482477e-13
    p = p * c2 - 8.60467152213735e-11
    p = p * c2 + 5.12229709037114e-08
    p = p * c2 + 1.48572235717979e-05
    p = p * c2 + 6.37261928875436e-04
    p = p * c2 + 4.89352455891786e-03
    q = 1.19825839466702e-06
    q = q * c2 + 1.18534705686654e-04
    q = q * c2 + 2.26843463243900e-03
    q = q * c2 + 4.89352518554385e-03
    return tl.where(tl.abs(x) < 0.0004, x, c * p / q)


@triton.jit
def elu(x):
    """x above 0, e^x - 1 at and below (alpha = 1)."""
    x = as_float(x)
    return tl.where(x > 0, x, tl.exp(x) - 1.0)


@triton.jit
def softplus(x):
    """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)): no overflow for large x, and for x far below 0
    the value exp(x) itself (log(1 + y) rounds 1 + y to 1 once y < 6e-8, which made softplus(-27) 0)."""
    x = as_float(x)
    return tl.maximum(x, 0.0) + log1p(tl.exp(-tl.abs(x)))


@triton.jit
def log1p(y):
    """log(1 + y) to a few ulp for small y: log(u) * y / (u - 1) with u = 1 + y rounded (the rounding of u
    cancels in the ratio), y itself where u rounds to 1."""
    u = 1.0 + y
    return tl.where(u == 1.0, y, tl.log(u) * (y / tl.where(u == 1.0, 1.0, u - 1.0)))


@triton.jit
def feature_sum(x, in_f):
    """sum(x) over a prologue tile's features (in_f: the features inside the row), one per row [R, 1]."""
    return tl.sum(tl.where(in_f, x, 0.0), 1)[:, None]


@triton.jit
def row_dot(tile, w, in_f):
    """sum(x * w) over the features of each row x of a resident tile ([R, F], the input's dtype or
    float32) as one product on tensor cores, not an [R, F] float32 copy of the tile. w ([1, F] or a
    number, float32) is scaled by a power of two to at most 1 in magnitude for fp16 (its range), then split
    into a part exact in the tile's dtype and the rest, columns 0 and 1 of an [F, 16] matrix: the
    products are exact and summed in float32, w kept to about 2^-16 of itself in bf16 and 2^-22 in
    fp16 (a float32 tile is multiplied in IEEE float32). Infinities and NaN give what the elementwise
    sum gives: an infinite or NaN w has no second part, and a row whose first column is not finite
    keeps it alone (inf * 0 in the second would be NaN). [R, 1] float32."""
    w = tl.where(in_f, w, 0.0)
    finite = tl.abs(w) < float("inf")
    if tile.dtype == tl.float16:  # bfloat16 has float32's range
        top = tl.max(tl.where(finite, tl.abs(w), 0.0), 1)[:, None]
        scale = tl.where(top > 0.0, tl.exp2(tl.ceil(tl.log2(top))), 1.0)
    else:
        scale = tl.full([1, 1], 1.0, dtype=tl.float32)
    w = w / scale
    hi = w.to(tile.dtype).to(tl.float32)
    lo = tl.where(finite, w - hi, 0.0).to(tile.dtype).to(tl.float32)
    column = tl.arange(0, 16)[None, :]
    matrix = tl.where(column == 0, tl.trans(hi), tl.where(column == 1, tl.trans(lo), 0.0)).to(tile.dtype)
    if tile.dtype == tl.float32:
        products = tl.dot(tile, matrix, input_precision="ieee")
    else:
        products = tl.dot(tile, matrix)
    high = tl.sum(tl.where(column == 0, products, 0.0), 1)[:, None]
    low = tl.sum(tl.where(column == 1, products, 0.0), 1)[:, None]
    return tl.where(tl.abs(high) < float("inf"), high + low, high) * scale


@triton.jit
def tf32_parts(x):
    """float32 x = hi + lo: hi what a TF32 product reads of x (its lower 13 mantissa bits cleared), lo
    the rest (0 where x is not finite, so that an infinite entry stays inf rather than inf - inf)."""
    hi = (x.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)
    hi = tl.where(x == x, hi, x)
    return hi, tl.where(tl.abs(x) < float("inf"), x - hi, 0.0)


@triton.jit
def tf32_rounded(x):
    """float32 x rounded to TF32's 10 mantissa bits (to nearest, ties away from zero, as cvt.rna), so
    that a TF32 product reads it whole: 2^-11 relative, where the tensor cores' own reading of a float32
    operand (its lower 13 bits ignored) errs by up to 2^-10. Infinities and NaN stay."""
    bits = x.to(tl.uint32, bitcast=True)
    rounded = ((bits + 0x1000) & 0xFFFFE000).to(tl.float32, bitcast=True)
    return tl.where(tl.abs(x) < float("inf"), rounded, x)


@triton.jit
def matrix_product(a, b, TF32: tl.constexpr):
    """a @ b in float32, as the matrix passes (runtime/prologue.py `_matrix_products`) and the chunked
    linear kernels (runtime/linear.py `_dot`) choose: TF32 = 0, IEEE float32 on FMA units (float32
    tensors where torch's matmuls are IEEE); 1, one TF32 product (float32 where torch's use TF32, as
    theirs); 2, one TF32 product on operands rounded to nearest (tf32_rounded: 2^-11, where the tensor
    cores' own reading errs by up to 2^-10); 3, three TF32 products on the operands' hi and lo parts,
    about float32's precision on the tensor cores (half types: the reference multiplies in float32
    before it rounds, and one TF32 product, 2^-10 off, moved a bf16 result by an ulp where it lay
    within that of a rounding boundary: a quarter of them)."""
    if TF32 == 2:
        return tl.dot(tf32_rounded(a), tf32_rounded(b), input_precision="tf32")
    elif TF32 == 3:
        a_hi, a_lo = tf32_parts(a)
        b_hi, b_lo = tf32_parts(b)
        part = tl.dot(a_lo, b_hi, input_precision="tf32")
        part = tl.dot(a_hi, b_lo, part, input_precision="tf32")
        return tl.dot(a_hi, b_hi, part, input_precision="tf32")
    elif TF32 == 1:
        return tl.dot(a, b, input_precision="tf32")
    else:
        return tl.dot(a, b, input_precision="ieee")


@triton.jit
def feature_mix(x, w, in_f, F, TF32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr):
    """sum(x[g] * w[g, f] for g) over a prologue tile: x [R, F] at the features (the summed ones), w the
    [F, F] matrix (rows g, columns f); the padding rows and columns count as 0. Multiplied as
    matrix_product says (TF32)."""
    x = tl.where(in_f, x + tl.zeros([BLOCK_M, BLOCK_F], dtype=tl.float32), 0.0)
    rows = tl.arange(0, BLOCK_F)[:, None]
    w = tl.where(rows < F, w + tl.zeros([BLOCK_F, BLOCK_F], dtype=tl.float32), 0.0)
    return matrix_product(x, w, TF32)


@triton.jit
def feature_mix_t(g, w, in_f, F, TF32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr):
    """The gradient of the row in sum(x[g] * w[g, f] for g) from g, that of the result ([R, F] at the
    features f): sum over f of g[f] w[gi, f] at each gi, the product with the matrix's transpose."""
    return feature_mix(g, tl.trans(w + tl.zeros([BLOCK_F, BLOCK_F], dtype=tl.float32)), in_f, F, TF32, BLOCK_M, BLOCK_F)


@triton.jit
def feature_outer(x, g, inside, TF32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr):
    """The gradient of the matrix in sum(x[g] * w[g, f] for g) from a tile's rows: the sum over the rows
    of x[g] g[f], [F (g), F (f)], the padding (outside `inside`) as 0; multiplied as feature_mix."""
    x = tl.where(inside, x + tl.zeros([BLOCK_M, BLOCK_F], dtype=tl.float32), 0.0)
    g = tl.where(inside, g + tl.zeros([BLOCK_M, BLOCK_F], dtype=tl.float32), 0.0)
    return matrix_product(tl.trans(x), g, TF32)


@triton.jit
def feature_softmax_grad(y, g, GROUPS: tl.constexpr, f, in_f, F, BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr):
    """The gradient of x in y = softmax(x, GROUPS) from g, that of y: y (g - the sum of g y over the
    feature's group)."""
    y = y + tl.zeros([BLOCK_M, BLOCK_F], dtype=tl.float32)
    gy = tl.where(in_f, y * g, 0.0)
    group = f // (F // GROUPS)
    total = tl.zeros([BLOCK_M, BLOCK_F], dtype=tl.float32)
    for k in tl.static_range(GROUPS):
        inside = group == k
        total = tl.where(inside, tl.sum(tl.where(inside, gy, 0.0), 1)[:, None], total)
    return y * (g - total)


@triton.jit
def feature_softmax(x, GROUPS: tl.constexpr, f, in_f, F, BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr):
    """softmax(x, GROUPS) over a prologue tile's features: within each group of F / GROUPS consecutive
    ones, exp(x - its max) over their sum (NaN for a group of -inf, as torch's softmax)."""
    x = x + tl.zeros([BLOCK_M, BLOCK_F], dtype=tl.float32)
    group = f // (F // GROUPS)
    out = tl.zeros([BLOCK_M, BLOCK_F], dtype=tl.float32)
    for g in tl.static_range(GROUPS):
        inside = in_f & (group == g)
        top = tl.max(tl.where(inside, x, float("-inf")), 1)[:, None]
        e = tl.where(inside, tl.exp(x - top), 0.0)
        out = tl.where(inside, e / tl.sum(e, 1)[:, None], out)
    return out


@triton.jit
def rope_pair(x, xp, angle, first):
    """rope at one feature of a pair (f, f + F/2): x its value, xp its partner's, angle the pair's;
    x cos a - xp sin a at the first feature, x cos a + xp sin a at the second."""
    return x * tl.cos(angle) + tl.where(first, -xp, xp) * tl.sin(angle)


@triton.jit
def selected_pairs(sel, q, kv, row_stride, SQ, SKV, QB: tl.constexpr, KB: tl.constexpr):
    """Whether a data-dependent selection keeps each pair (q [R, 1], kv [1, C]): its block's entry in
    `sel` (int8 per (query block, key block) of QB x KB, rows of blocks `row_stride` apart), read where
    a kernel tile holds parts of several blocks; False outside the lengths."""
    inside = (q < SQ) & (kv < SKV)
    return tl.load(sel + (q // QB).to(tl.int64) * row_stride + kv // KB, mask=inside, other=0) != 0


@triton.jit
def load_tile(base, rows, cols, row_stride, col_stride, n_rows, n_cols, UPCAST: tl.constexpr):
    """The [len(rows), len(cols)] tile of a strided matrix at `base`, 0 outside [n_rows, n_cols): every
    Q, K, V and dO tile of the kernels (K^T and V^T by swapping the axes); float32 with UPCAST."""
    tile = tl.load(base + rows[:, None] * row_stride + cols[None, :] * col_stride,
                   mask=(rows[:, None] < n_rows) & (cols[None, :] < n_cols), other=0.0)
    if UPCAST:
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def load_inner_tile(base, rows, cols, row_stride, col_stride, n_rows, n_cols, UPCAST: tl.constexpr,
                    ROWS_INSIDE: tl.constexpr, COLS_INSIDE: tl.constexpr):
    """load_tile where the caller knows that every row (ROWS_INSIDE) or every column (COLS_INSIDE) is
    inside the matrix: a full key tile's keys, features where the head dim is its tile's. No bound is
    computed for those, and with both no mask at all."""
    ptrs = base + rows[:, None] * row_stride + cols[None, :] * col_stride
    if ROWS_INSIDE and COLS_INSIDE:
        tile = tl.load(ptrs)
    elif ROWS_INSIDE:
        tile = tl.load(ptrs, mask=cols[None, :] < n_cols, other=0.0)
    elif COLS_INSIDE:
        tile = tl.load(ptrs, mask=rows[:, None] < n_rows, other=0.0)
    else:
        tile = tl.load(ptrs, mask=(rows[:, None] < n_rows) & (cols[None, :] < n_cols), other=0.0)
    if UPCAST:
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def load_described(desc, b, h, first, UPCAST: tl.constexpr, TRANSPOSE: tl.constexpr):
    """The tile of matrix (b, h) of a [B, H, rows, features] tensor whose first row is `first`, through
    the tensor's descriptor (runtime/triton.py `descriptors`: its block is [1, 1, rows, features]). On
    Hopper the tensor-memory copy engine (TMA) fetches it and fills rows and features past the tensor's
    ends with zeros, so no bound is computed at all. [features, rows] with TRANSPOSE; float32 with UPCAST."""
    block = desc.load([b, h, first, 0])
    tile = tl.reshape(block, [block.shape[2], block.shape[3]])
    if UPCAST:
        tile = tile.to(tl.float32)
    if TRANSPOSE:
        tile = tl.trans(tile)
    return tile


@triton.jit
def rounded(x, BITS: tl.constexpr):
    """float32 x rounded to BITS fewer mantissa bits (to nearest, ties to even), in float32: where the
    interpreter multiplies in float32, what the GPU's cast to a half type rounds (16: bfloat16, which
    has float32's range; 13: float16, its range too: past 65504 to infinity, below 2^-14 to its
    subnormals' spacing 2^-24). NaN stays NaN. The chunked linear kernels' bf16 operands use it
    (runtime/linear.py `_dot`)."""
    x = x.to(tl.float32)
    bits = x.to(tl.uint32, bitcast=True)
    HALF: tl.constexpr = (1 << (BITS - 1)) - 1
    KEPT: tl.constexpr = 0xFFFFFFFF ^ ((1 << BITS) - 1)
    bits = (bits + HALF + ((bits >> BITS) & 1)) & KEPT
    y = bits.to(tl.float32, bitcast=True)
    if BITS == 13:
        # float32's ulp in [0.5, 1) is 2^-24: adding 0.75 rounds a subnormal once, ties to even
        y = tl.where(tl.abs(x) < 6.103515625e-05, (x + 0.75) - 0.75, y)
        y = tl.where(tl.abs(y) > 65504.0, tl.where(x > 0, float("inf"), -float("inf")), y)
    return tl.where(x == x, y, x)


@triton.jit
def mma(a, b, acc, IEEE: tl.constexpr):
    """a @ b (+ acc): float32 products in full precision with IEEE (no TF32)."""
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def operand(x, like, UPCAST: tl.constexpr):
    """float32 x as an operand of a product with the tile `like`: cast to its type on a GPU (the weights
    and dS enter the tensor cores in the half type, as in FlashAttention); in the interpreter, whose
    half tiles are float32 (UPCAST: the mantissa bits the half type drops), rounded as that cast rounds,
    so that the CPU tests hold the GPU's rounding to the accuracy rule."""
    if UPCAST:
        return rounded(x, UPCAST)
    else:
        return x.to(like.dtype)


@triton.jit
def mma_split(p, v, acc, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """acc + p @ v, float32 p in two operands of v's half type: its rounding and what the rounding
    dropped (relative error 2^-16 in bfloat16 rather than 2^-8), at twice the products. One product
    where v is float32 (nothing is dropped)."""
    if UPCAST or v.dtype != tl.float32:
        high = operand(p, v, UPCAST)
        acc = mma(operand(p - high.to(tl.float32), v, UPCAST), v, acc, IEEE)
        return mma(high, v, acc, IEEE)
    else:
        return mma(p, v, acc, IEEE)


@triton.jit
def row_scales(a):
    """Per row of float32 a, a power of two r that brings the row's largest |a| into [0.5, 1), and 1 / r
    (both [rows, 1], exact): 1 for a row whose largest is 0, subnormal, past 2^125, inf or NaN."""
    top = tl.max(tl.abs(a), 1)[:, None]
    e = (top.to(tl.uint32, bitcast=True) >> 23) & 0xFF  # the biased exponent of the row's largest
    ok = (e > 0) & (e < 253)
    r = tl.where(ok, ((253 - e) << 23).to(tl.float32, bitcast=True), 1.0)
    inv = tl.where(ok, ((e + 1) << 23).to(tl.float32, bitcast=True), 1.0)
    return r, inv


@triton.jit
def mma_scaled(a, b, acc, IEEE: tl.constexpr, UPCAST: tl.constexpr, SPLIT: tl.constexpr = False):
    """acc + a @ b, float32 a of any magnitude (the weights of elementwise and rownorm forms, and their
    gradients) as an operand of b's type (in two with SPLIT, as mma_split). float16's normal numbers
    span 6e-5 to 65504: there each row of a is scaled by the power of two that brings its largest |a|
    into [0.5, 1) before the cast, and the product's row back after it (row_scales; both exact), so
    every row keeps float16's relative precision where a weight of 1e-6 would lose it to the
    subnormals and one of 1e5 overflow, as a softmax's weights (<= 1) keep it. bfloat16 has float32's
    range: a enters as it is."""
    if UPCAST == 13 or (not UPCAST and b.dtype == tl.float16):
        r, inv = row_scales(a)
        if SPLIT:
            part = mma_split(a * r, b, None, IEEE, UPCAST)
        else:
            part = mma(operand(a * r, b, UPCAST), b, None, IEEE)
        return acc + part * inv
    elif SPLIT:
        return mma_split(a, b, acc, IEEE, UPCAST)
    else:
        return mma(operand(a, b, UPCAST), b, acc, IEEE)


@triton.jit
def band_tiles(lo, hi, rows, SKV, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The key tiles of one band of a query tile: row q keeps keys lo(q) <= kv <= hi(q) (per row,
    [BLOCK_M, 1]; rows: the rows inside the length). Returns (start, fs, fe, end): tiles [start, end)
    hold kept pairs of some row, and [fs, fe) hold only kept pairs for every row (full tiles), all of
    them inside SKV (a tile that reaches past the last key is partial: full tiles need no bound)."""
    lo = tl.maximum(lo + tl.zeros([BLOCK_M, 1], dtype=tl.int32), 0)
    hi = tl.minimum(hi + tl.zeros([BLOCK_M, 1], dtype=tl.int32), SKV - 1)
    some = rows & (hi >= lo)
    start = tl.min(tl.where(some, lo, SKV)) // BLOCK_N
    end = (tl.max(tl.where(some, hi, -1)) + BLOCK_N) // BLOCK_N
    full_lo = tl.max(tl.where(rows, tl.where(some, lo, SKV + BLOCK_N), 0))
    full_hi = tl.min(tl.where(rows, tl.where(some, hi, -1), SKV))
    fs = tl.minimum(tl.maximum((full_lo + BLOCK_N - 1) // BLOCK_N, start), end)
    fe = tl.minimum(tl.maximum((full_hi + 1) // BLOCK_N, fs), end)  # a tile past SKV - 1 is never full
    return start, fs, fe, end


@triton.jit
def softmax_update(t, m, l, acc, scale):
    """One key tile of the online softmax: t the kept logits (-inf elsewhere) in units that `scale`
    turns into log2 (log2(e), or the scale times log2(e) where the logits are raw products). Returns
    the new running max and sum, the rescaled accumulator, and the tile's weights."""
    m_new = tl.maximum(m, tl.max(t, 1)[:, None])
    m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)
    alpha = tl.exp2((m - m_safe) * scale)
    p = tl.exp2((t - m_safe) * scale)  # subtract first: exact for near products, one rounding in the exponent
    l = l * alpha + tl.sum(p, 1)[:, None]
    return m_new, l, acc * alpha, p


@triton.jit
def normalized_rows(m, l, acc, NORM: tl.constexpr):
    """A query tile's output from the running state (float32), and its undefined rows (language.md
    section 8, NaN): where a NaN or +inf logit or sink left m at +inf or NaN or l at NaN (softmax), or a
    NaN or infinite weight left l NaN or infinite."""
    if NORM == "softmax":
        undef = (m != m) | (m == float("inf")) | (l != l)
    elif NORM == "rownorm":
        undef = (l != l) | (l == float("inf"))
    else:
        undef = (l != l) | (tl.abs(l) == float("inf"))
    if NORM == "elementwise":
        o = tl.where(undef, float("nan"), acc)
    else:
        o = tl.where(undef, float("nan"), tl.where(l > 0, acc / l, 0.0))
    return o, undef


@triton.jit
def store_rows(o, undef, m, l, out_ptrs, out_mask, Lse, Stats, row, rows, m_scale,
               NORM: tl.constexpr, FOLDED: tl.constexpr, WRITE_LSE: tl.constexpr, WRITE_STATS: tl.constexpr,
               STATS_LOG2: tl.constexpr = False):
    """The forward's end for a query tile: out (and lse, and the row statistics the backward reads).
    row: each row's index into [B * H * SQ]; m_scale turns a max over raw products (FOLDED) into natural units.
    STATS_LOG2: the max is stored as the forward found it, in log2 units (the backward recomputes the
    scores in those units with the same code, so a row's largest weight is exactly the forward's)."""
    tl.store(out_ptrs, o.to(out_ptrs.dtype.element_ty), mask=out_mask)
    m_stats = m
    if FOLDED:
        m = m * m_scale
    if not STATS_LOG2:
        m_stats = m
    if WRITE_LSE:
        if NORM == "softmax":
            lse = tl.where(l > 0, m + tl.log(l), -float("inf"))
        else:
            lse = tl.log(l)
        lse = tl.where(undef, float("nan"), lse)
        tl.store(Lse + row, lse, mask=rows)
    if WRITE_STATS:  # the backward's weights exp(s - m) / l round like the forward's (lse would add its own rounding)
        if NORM == "softmax":
            tl.store(Stats + row * 2, m_stats, mask=rows)
        if NORM != "elementwise":
            tl.store(Stats + row * 2 + 1, l, mask=rows)
