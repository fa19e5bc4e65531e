/* clreg's fused training step: a registered fast path (clreg.core.step, backend "native") for the step that
 * clreg.core.step.tensor_step defines with the formulas of clreg.core.formulas, for Adam and AdamW on float32.
 * This file defines no formula of its own: it executes those, operation for operation in their order and
 * without contraction (-ffp-contract=off), so that it equals them bit for bit; tests/test_step.py holds it
 * there. Every scalar arrives derived in float64 by clreg.core.optimizers and clreg.core.statistic.
 * In one pass over a parameter tensor:
 *   1. the penalty gradient 2P(θ − m), 2P = weight·scale + offset, joins g (penalty 1), or is taken out of g
 *      for the statistic (penalty 2),
 *   2. formulas.adam updates θ, m, v,
 *   3. the statistic: formulas.path (statistic 1) or formulas.moment (statistic 2) of u = a·g + b·g'.
 * Unfused, these are ~20 passes over the parameters per step; fused, the penalty and the statistic
 * add three arrays to Adam's four. Built at first use by clreg.core.native; plain C, no torch headers. */
#include <stdint.h>
#include <string.h>
#include <math.h>

typedef struct {
    double weight_decay, decay_factor, one_minus_beta1, beta2, one_minus_beta2, step_size, inverse_bias_correction2_sqrt, eps;
    double task_weight, other_weight, decay, one_minus_decay;
    double penalty_scale, penalty_offset; /* 2P = weight·scale + offset: Ω, 2sc, 2s·λ (online) or 2sP, 1, 0 */
    int64_t decoupled;         /* 1: AdamW's θ ← θ(1 − lr·wd); 0: Adam's g ← g + wd·θ */
    int64_t penalty;           /* 0 none, 1 add 2P(θ−θ*) to g, 2 g already holds it: take it out for u */
    int64_t statistic;         /* 0 none, 1 path, 2 moment */
    int64_t threads;
    int64_t narrow;            /* 1: the anchor and the weight are bfloat16 (read exactly as float32, as .to(float32)) */
} clreg_step_options;

/* element i of the anchor or weight array: float32, or bfloat16 widened exactly (its bits are float32's top half) */
static inline float load(const void *restrict array, int64_t i, const int narrow)
{
    if (narrow) {
        const uint32_t bits = (uint32_t)((const uint16_t *)array)[i] << 16;
        float value;
        memcpy(&value, &bits, sizeof value);
        return value;
    }
    return ((const float *)array)[i];
}

static inline void step_range(int64_t begin, int64_t end, const clreg_step_options *o,
                              float *restrict param, const float *restrict grad,
                              float *restrict exp_avg, float *restrict exp_avg_sq,
                              const void *restrict anchor, const void *restrict weight,
                              float *restrict stat, const float *restrict other,
                              const int penalty, const int statistic, const int decoupled, const int has_other,
                              const int narrow)
{
    const float wd = (float)o->weight_decay, decay_factor = (float)o->decay_factor;
    const float one_minus_beta1 = (float)o->one_minus_beta1, beta2 = (float)o->beta2;
    const float one_minus_beta2 = (float)o->one_minus_beta2, eps = (float)o->eps;
    const float step_size = (float)o->step_size, inv_bc2_sqrt = (float)o->inverse_bias_correction2_sqrt;
    const float a = (float)o->task_weight, b = (float)o->other_weight;
    const float decay = (float)o->decay, one_minus_decay = (float)o->one_minus_decay;
    const float pscale = (float)o->penalty_scale, poffset = (float)o->penalty_offset;
#pragma omp simd
    for (int64_t i = begin; i < end; i++) {
        const float theta = param[i];
        float g_task = grad[i], g = grad[i];
        if (penalty) {
            const float pen = (load(weight, i, narrow) * pscale + poffset) * (theta - load(anchor, i, narrow));
            if (penalty == 1) g += pen; else g_task -= pen;
        }
        float p = theta;
        if (o->weight_decay != 0.0) {
            if (decoupled) p *= decay_factor; else g += wd * theta;
        }
        const float m = exp_avg[i] + one_minus_beta1 * (g - exp_avg[i]);
        const float v = beta2 * exp_avg_sq[i] + one_minus_beta2 * g * g;
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
        p -= step_size * m / (sqrtf(v) * inv_bc2_sqrt + eps);
        param[i] = p;
        if (statistic) {
            const float u = has_other ? a * g_task + b * other[i] : a * g_task;
            if (statistic == 1) stat[i] -= u * (p - theta);
            else stat[i] = decay * stat[i] + one_minus_decay * u * u;
        }
    }
}

/* every flag a compile-time constant, `other` included: a branch left in the loop (a load of other[i]
 * under a runtime test) keeps compilers from vectorising it without masked loads, i.e. on AVX2 */
#define DISPATCH_N(P, S, D, N)                                                                     \
    do {                                                                                           \
        if (other) step_range(begin, end, o, param, grad, exp_avg, exp_avg_sq, anchor,            \
                              weight, stat, other, P, S, D, 1, N);                                 \
        else step_range(begin, end, o, param, grad, exp_avg, exp_avg_sq, anchor,                  \
                        weight, stat, other, P, S, D, 0, N);                                       \
    } while (0)
/* the storage's width only matters where the penalty is read */
#define DISPATCH(P, S, D)                                                                          \
    do {                                                                                           \
        if ((P) && o->narrow) DISPATCH_N(P, S, D, 1); else DISPATCH_N(P, S, D, 0);                \
    } while (0)

static void step_chunk(int64_t begin, int64_t end, const clreg_step_options *o, float *param,
                       const float *grad, float *exp_avg, float *exp_avg_sq, const void *anchor,
                       const void *weight, float *stat, const float *other)
{
    /* constant flags so that the compiler emits one branch-free loop per combination */
    const int d = o->decoupled != 0;
    switch ((int)(o->penalty * 3 + o->statistic)) {
    case 0: if (d) DISPATCH(0, 0, 1); else DISPATCH(0, 0, 0); break;
    case 1: if (d) DISPATCH(0, 1, 1); else DISPATCH(0, 1, 0); break;
    case 2: if (d) DISPATCH(0, 2, 1); else DISPATCH(0, 2, 0); break;
    case 3: if (d) DISPATCH(1, 0, 1); else DISPATCH(1, 0, 0); break;
    case 4: if (d) DISPATCH(1, 1, 1); else DISPATCH(1, 1, 0); break;
    case 5: if (d) DISPATCH(1, 2, 1); else DISPATCH(1, 2, 0); break;
    case 6: if (d) DISPATCH(2, 0, 1); else DISPATCH(2, 0, 0); break;
    case 7: if (d) DISPATCH(2, 1, 1); else DISPATCH(2, 1, 0); break;
    default: if (d) DISPATCH(2, 2, 1); else DISPATCH(2, 2, 0); break;
    }
}

int64_t clreg_fused_step(int64_t n, const clreg_step_options *o, float *param, const float *grad,
                         float *exp_avg, float *exp_avg_sq, const void *anchor,
                         const void *weight, float *stat, const float *other)
{
    const int64_t grain = 1 << 15; /* elements per chunk; small tensors stay on one thread */
    const int64_t chunks = (n + grain - 1) / grain;
#pragma omp parallel for schedule(static) num_threads((int)o->threads) if (chunks > 1)
    for (int64_t c = 0; c < chunks; c++) {
        const int64_t begin = c * grain, end = begin + grain < n ? begin + grain : n;
        step_chunk(begin, end, o, param, grad, exp_avg, exp_avg_sq, anchor, weight, stat, other);
    }
    return 0;
}
