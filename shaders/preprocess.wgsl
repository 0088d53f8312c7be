// preprocess.wgsl — packed u8 images (HWC) to normalised f32 NCHW, with the
// per-sample augmentation of the training environments, in one pass.
//
// One invocation per output pixel (sample s, row oy, column ox); it writes all
// C channels of that pixel. For sample s with source size (sw, sh) and output
// size (ow, oh), the value is, in this order:
//   1. bilinear resize R of the source to (oh, ow), align_corners = false:
//      src = (o + 0.5) * (source / output) - 0.5, clamped to [0, size - 1];
//      i0 = floor(src), i1 = min(i0 + 1, size - 1), w = src - i0;
//      R = (1 - wy) * ((1 - wx) * p00 + wx * p01) + wy * ((1 - wx) * p10 + wx * p11)
//      (PyTorch's `interpolate(mode="bilinear", align_corners=False,
//      antialias=False)`; equal sizes give the identity);
//   2. crop with zero padding: C(y, x) = R(y + dy, x + dx), 0 outside R
//      (dx, dy in [-pad, pad]: "pad by `pad`, crop at offset pad + d");
//   3. horizontal flip: F(y, x) = C(y, ow - 1 - x) when the sample's flag is set;
//   4. photometric jitter: J = clamp(g * F + o, 0, 255) with gain g and
//      offset o (pixel units), skipped when g = 1 and o = 0;
//   5. normalisation: out = J * scale[c] + bias[c] with scale = 1 / (255 std[c])
//      and bias = -mean[c] / std[c], i.e. (J / 255 - mean[c]) / std[c].
// The per-sample parameters (dx, dy, flip, g, o) come either
//   - from `sample_rand(seed, s)` (P_EXPLICIT = 0): the PCG hash below,
//     mirrored bit for bit by `h2e::kernels::hash` in Rust, with brightness b
//     and contrast k around 127.5 giving g = b * k, o = 127.5 * (1 - k); or
//   - from the sample's words 3 to 7 (P_EXPLICIT = 1), drawn by the caller
//     (the training engine's own seeded draws).
//
// Bindings (group 0, all `var<storage, read_write>`: Burn's allocator sub-allocates
// small buffers from shared pages, and wgpu refuses one buffer bound both
// read-only and writable in a dispatch; inputs are only read):
//   0 pixels  : array<u32>, in          the batch's bytes, 4 per word, little-endian
//   1 samples : array<u32>, in          8 words per sample: byte offset, width, height,
//                                       dx (i32), dy (i32), flip, g (f32), o (f32)
//   2 params  : array<u32>, in          header, see P_* below (f32 as bit patterns)
//   3 out     : array<f32>, out        [n, channels, oh, ow]
// Workgroup size 256 (1-D). Dispatch: g = ceil(n * oh * ow / 256) groups as
// (min(g, 65535), ceil(g / 65535), 1); the linear index is
// gid.x + gid.y * num_workgroups.x * 256. Every access is bounds-checked
// against arrayLength.

const WG: u32 = 256u;

const P_N: u32 = 0u;          // samples
const P_C: u32 = 1u;          // channels (1 or 3), in and out
const P_OH: u32 = 2u;         // output height
const P_OW: u32 = 3u;         // output width
const P_PAD: u32 = 4u;        // crop padding (0: no shift)
const P_FLIP: u32 = 5u;       // 1: random horizontal flip
const P_SEED_LO: u32 = 6u;    // seed, low 32 bits
const P_SEED_HI: u32 = 7u;    // seed, high 32 bits
const P_BRIGHT: u32 = 8u;     // f32: brightness range, b in [1 - r, 1 + r]
const P_CONTRAST: u32 = 9u;   // f32: contrast range, k in [1 - r, 1 + r]
const P_SCALE: u32 = 10u;     // f32 x3: 1 / (255 std[c])
const P_BIAS: u32 = 13u;      // f32 x3: -mean[c] / std[c]
const P_EXPLICIT: u32 = 16u;  // 1: per-sample parameters from `samples`
const P_LEN: u32 = 17u;
const S_WORDS: u32 = 8u;      // words per sample in `samples`

@group(0) @binding(0) var<storage, read_write> pixels: array<u32>;
@group(0) @binding(1) var<storage, read_write> samples: array<u32>;
@group(0) @binding(2) var<storage, read_write> params: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// PCG-RXS-M-XS 32-bit hash (Jarzynski & Olano, "Hash Functions for GPU
// Rendering", JCGT 2020).
fn pcg(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

// Uniform in [0, 1) from the top 24 bits (exact in f32).
fn unit(x: u32) -> f32 {
    return f32(x >> 8u) * (1.0 / 16777216.0);
}

struct Aug {
    dx: i32,
    dy: i32,
    flip: bool,
    gain: f32,
    offset: f32,
}

fn sample_rand(seed_lo: u32, seed_hi: u32, s: u32) -> Aug {
    let base = pcg(pcg(s ^ pcg(seed_hi)) ^ seed_lo);
    let pad = params[P_PAD];
    let span = 2u * pad + 1u;
    var a: Aug;
    a.dx = i32(pcg(base) % span) - i32(pad);
    a.dy = i32(pcg(base + 1u) % span) - i32(pad);
    a.flip = params[P_FLIP] != 0u && (pcg(base + 2u) & 1u) == 1u;
    let rb = bitcast<f32>(params[P_BRIGHT]);
    let rc = bitcast<f32>(params[P_CONTRAST]);
    let b = 1.0 + rb * (2.0 * unit(pcg(base + 3u)) - 1.0);
    let k = 1.0 + rc * (2.0 * unit(pcg(base + 4u)) - 1.0);
    a.gain = b * k;
    a.offset = 127.5 * (1.0 - k);
    return a;
}

fn sample_given(s: u32) -> Aug {
    let w = S_WORDS * s;
    var a: Aug;
    a.dx = bitcast<i32>(samples[w + 3u]);
    a.dy = bitcast<i32>(samples[w + 4u]);
    a.flip = samples[w + 5u] != 0u;
    a.gain = bitcast<f32>(samples[w + 6u]);
    a.offset = bitcast<f32>(samples[w + 7u]);
    return a;
}

fn byte_at(i: u32) -> f32 {
    let w = i >> 2u;
    if (w >= arrayLength(&pixels)) {
        return 0.0;
    }
    return f32((pixels[w] >> ((i & 3u) * 8u)) & 255u);
}

@compute @workgroup_size(256)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    if (arrayLength(&params) < P_LEN) {
        return;
    }
    let idx = gid.x + gid.y * nwg.x * WG;
    let n = params[P_N];
    let ch = params[P_C];
    let oh = params[P_OH];
    let ow = params[P_OW];
    let plane = oh * ow;
    if (idx >= n * plane) {
        return;
    }
    let s = idx / plane;
    let rem = idx - s * plane;
    let oy = rem / ow;
    let ox = rem - oy * ow;
    if (S_WORDS * s + S_WORDS > arrayLength(&samples)) {
        return;
    }
    let base = samples[S_WORDS * s];
    let sw = samples[S_WORDS * s + 1u];
    let sh = samples[S_WORDS * s + 2u];

    var a: Aug;
    if (params[P_EXPLICIT] != 0u) {
        a = sample_given(s);
    } else {
        a = sample_rand(params[P_SEED_LO], params[P_SEED_HI], s);
    }
    var cx = ox;
    if (a.flip) {
        cx = ow - 1u - ox;
    }
    let ry = i32(oy) + a.dy;
    let rx = i32(cx) + a.dx;
    let inside = ry >= 0 && ry < i32(oh) && rx >= 0 && rx < i32(ow) && sw > 0u && sh > 0u;

    // Bilinear taps in the source (only used when inside).
    var x0 = 0u;
    var x1 = 0u;
    var y0 = 0u;
    var y1 = 0u;
    var wx = 0.0;
    var wy = 0.0;
    if (inside) {
        let sx = clamp((f32(rx) + 0.5) * (f32(sw) / f32(ow)) - 0.5, 0.0, f32(sw - 1u));
        let sy = clamp((f32(ry) + 0.5) * (f32(sh) / f32(oh)) - 0.5, 0.0, f32(sh - 1u));
        x0 = u32(floor(sx));
        y0 = u32(floor(sy));
        x1 = min(x0 + 1u, sw - 1u);
        y1 = min(y0 + 1u, sh - 1u);
        wx = sx - f32(x0);
        wy = sy - f32(y0);
    }
    let jitter = a.gain != 1.0 || a.offset != 0.0;
    let row0 = base + y0 * sw * ch;
    let row1 = base + y1 * sw * ch;
    for (var c = 0u; c < ch; c = c + 1u) {
        var v = 0.0;
        if (inside) {
            let p00 = byte_at(row0 + x0 * ch + c);
            let p01 = byte_at(row0 + x1 * ch + c);
            let p10 = byte_at(row1 + x0 * ch + c);
            let p11 = byte_at(row1 + x1 * ch + c);
            let top = (1.0 - wx) * p00 + wx * p01;
            let bot = (1.0 - wx) * p10 + wx * p11;
            v = (1.0 - wy) * top + wy * bot;
        }
        if (jitter) {
            v = clamp(a.gain * v + a.offset, 0.0, 255.0);
        }
        let o = ((s * ch + c) * oh + oy) * ow + ox;
        if (o < arrayLength(&out)) {
            out[o] = v * bitcast<f32>(params[P_SCALE + c]) + bitcast<f32>(params[P_BIAS + c]);
        }
    }
}
