// score.wgsl — fused identifier scoring, one invocation per sample.
//
// For row i of the logits z[n, classes] with per-class tau and log prior
// log(pi) (the semantics of `h2e::score::per_sample`, the reference):
//   a_k        = z_ik - tau_k * log(pi_k)           (adjusted logits)
//   m          = max_k a_k, pred = lowest k with a_k = m (first strict maximum)
//   plain      = lowest k with z_ik = max_k z_ik (the unadjusted prediction)
//   sum        = sum_k exp(a_k - m)                  (max-subtracted: no overflow)
//   max_prob   = 1 / sum
//   prob_label = exp(a_label - m) / sum, or max_prob when the label is outside
//                [0, classes) (unlabelled, e.g. -1)
//   noise      = clamp(1 - prob_label, 0, 1)
// Finite logits never give NaN: every exponent is <= 0 and sum >= 1.
//
// Bindings (group 0, all `var<storage, read_write>`: Burn's allocator sub-allocates
// small buffers from shared pages, and wgpu refuses one buffer bound both
// read-only and writable in a dispatch; inputs are only read):
//   0 logits : array<f32>, in          [n, classes], row-major, contiguous
//   1 labels : array<i32>, in          [n]
//   2 params : array<u32>, in          [n, classes, tau (classes x f32 bits),
//                                       log_prior (classes x f32 bits)]
//   3 pred   : array<i32>, out        [2, n]: pred, plain
//   4 scores : array<f32>, out        [3, n]: noise, max_prob, prob_label
// Workgroup size 64 (1-D). Dispatch: g = ceil(n / 64) groups as
// (min(g, 65535), ceil(g / 65535), 1); the linear index is
// gid.x + gid.y * num_workgroups.x * 64. Every access is bounds-checked
// against arrayLength.

const WG: u32 = 64u;

@group(0) @binding(0) var<storage, read_write> logits: array<f32>;
@group(0) @binding(1) var<storage, read_write> labels: array<i32>;
@group(0) @binding(2) var<storage, read_write> params: array<u32>;
@group(0) @binding(3) var<storage, read_write> pred: array<i32>;
@group(0) @binding(4) var<storage, read_write> scores: array<f32>;

fn adjusted(row: u32, k: u32, classes: u32) -> f32 {
    let tau = bitcast<f32>(params[2u + k]);
    let lp = bitcast<f32>(params[2u + classes + k]);
    return logits[row + k] - tau * lp;
}

@compute @workgroup_size(64)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    if (arrayLength(&params) < 2u) {
        return;
    }
    let i = gid.x + gid.y * nwg.x * WG;
    let n = params[0];
    let classes = params[1];
    if (i >= n || classes == 0u) {
        return;
    }
    let row = i * classes;
    if (row + classes > arrayLength(&logits) || 2u + 2u * classes > arrayLength(&params)
        || i >= arrayLength(&labels) || n + i >= arrayLength(&pred)
        || 2u * n + i >= arrayLength(&scores)) {
        return;
    }

    var m = adjusted(row, 0u, classes);
    var best = 0u;
    for (var k = 1u; k < classes; k = k + 1u) {
        let a = adjusted(row, k, classes);
        if (a > m) {
            m = a;
            best = k;
        }
    }
    var plain = 0u;
    var zmax = logits[row];
    for (var k = 1u; k < classes; k = k + 1u) {
        if (logits[row + k] > zmax) {
            zmax = logits[row + k];
            plain = k;
        }
    }
    var sum = 0.0;
    for (var k = 0u; k < classes; k = k + 1u) {
        sum = sum + exp(adjusted(row, k, classes) - m);
    }
    let max_prob = 1.0 / sum;
    var prob_label = max_prob;
    let label = labels[i];
    if (label >= 0 && u32(label) < classes) {
        prob_label = exp(adjusted(row, u32(label), classes) - m) / sum;
    }
    pred[i] = i32(best);
    pred[n + i] = i32(plain);
    scores[i] = clamp(1.0 - prob_label, 0.0, 1.0);
    scores[n + i] = max_prob;
    scores[2u * n + i] = prob_label;
}
