//! The error an 8-bit KV cache adds to attention: `cargo run --release --example quant_error`.
//!
//! For each case (decode against a long cache, and a causal prefill), K and V are drawn
//! (uniform in [-1, 1], and the same with a few outlier channels ten times larger, as the
//! keys of real models have), quantised to int8 (a scale per token and head), fp8 e4m3 and
//! e5m2 (a scale per KV head, from the head's largest magnitude), and attended with the same
//! f32 queries. Printed against the f32 attention on the unquantised K/V: the largest
//! absolute error of the outputs, the largest relative to the outputs' largest magnitude,
//! and the cosine similarity of the whole output.

use fastattn_attention::quant::QuantTensor;
use fastattn_attention::{sdpa, sdpa_kv_into, SdpaOptions, SdpaOutputs, TensorMut, TensorRef};
use kernels::quant::{quantize_row, Code, F8E4M3, F8E5M2};

/// A small deterministic generator (xorshift), uniform in [-1, 1).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// `x` (`[1, hkv, lk, d]`) as codes with per-row scales (`per_row`) or one scale per head.
fn quantise<C: Code>(x: &[f32], hkv: usize, d: usize, per_row: bool) -> (Vec<C>, Vec<f32>) {
    let mut codes = vec![C::default(); x.len()];
    let scales = if per_row {
        x.chunks(d)
            .zip(codes.chunks_mut(d))
            .map(|(r, c)| quantize_row(r, None, c).expect("finite"))
            .collect()
    } else {
        let per_head = x.len() / hkv;
        x.chunks(per_head)
            .zip(codes.chunks_mut(per_head))
            .map(|(r, c)| {
                let amax = r.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let s = (amax / C::MAX).max(f32::MIN_POSITIVE);
                quantize_row(r, Some(s), c).expect("finite")
            })
            .collect()
    };
    (codes, scales)
}

/// `(max |err|, max |err| / max |want|, cosine)`.
fn compare(got: &[f32], want: &[f32]) -> (f64, f64, f64) {
    let (mut emax, mut wmax, mut dot, mut gg, mut ww) = (0.0f64, 0.0f64, 0.0, 0.0, 0.0);
    for (&g, &w) in got.iter().zip(want) {
        let (g, w) = (g as f64, w as f64);
        emax = emax.max((g - w).abs());
        wmax = wmax.max(w.abs());
        dot += g * w;
        gg += g * g;
        ww += w * w;
    }
    (emax, emax / wmax, dot / (gg.sqrt() * ww.sqrt()))
}

#[allow(clippy::too_many_arguments)]
fn run<C: Code>(
    name: &str,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dims: [usize; 5],
    causal: bool,
    per_row: bool,
    want: &[f32],
) {
    let [hq, hkv, lq, lk, d] = dims;
    let (kc, ks) = quantise::<C>(k, hkv, d, per_row);
    let (vc, vs) = quantise::<C>(v, hkv, d, per_row);
    let kd = [1, hkv, lk, d];
    let sst = if per_row { [0, lk, 1] } else { [0, 1, 0] };
    let kq = QuantTensor::new(TensorRef::contiguous(&kc, kd).unwrap(), &ks, sst).unwrap();
    let vq = QuantTensor::new(TensorRef::contiguous(&vc, kd).unwrap(), &vs, sst).unwrap();
    let mut out = vec![0.0f32; hq * lq * d];
    sdpa_kv_into(
        TensorRef::contiguous(q, [1, hq, lq, d]).unwrap().into(),
        kq.into(),
        vq.into(),
        TensorMut::contiguous(&mut out, [1, hq, lq, d])
            .unwrap()
            .into(),
        &SdpaOptions::new().with_causal(causal),
        SdpaOutputs::default(),
    )
    .unwrap();
    let (emax, erel, cos) = compare(&out, want);
    println!("  {name:<18} max|err| {emax:9.2e}  max|err|/max|out| {erel:9.2e}  cosine {cos:.8}");
}

fn main() {
    for (label, dims, causal) in [
        (
            "decode Lk=4096 Hq=8 Hkv=2 D=128",
            [8usize, 2, 1, 4096, 128],
            false,
        ),
        ("prefill L=512 H=4 D=64, causal", [4, 4, 512, 512, 64], true),
    ] {
        for outliers in [false, true] {
            let [hq, hkv, lq, lk, d] = dims;
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
            let q: Vec<f32> = (0..hq * lq * d).map(|_| rng.next()).collect();
            let mut k: Vec<f32> = (0..hkv * lk * d).map(|_| rng.next()).collect();
            let v: Vec<f32> = (0..hkv * lk * d).map(|_| rng.next()).collect();
            if outliers {
                // Channels 3 and 70 (mod D) ten times larger in every key.
                for (i, x) in k.iter_mut().enumerate() {
                    if i % d == 3 || i % d == 70 % d {
                        *x *= 10.0;
                    }
                }
            }
            let want = sdpa(
                TensorRef::contiguous(&q, [1, hq, lq, d]).unwrap(),
                TensorRef::contiguous(&k, [1, hkv, lk, d]).unwrap(),
                TensorRef::contiguous(&v, [1, hkv, lk, d]).unwrap(),
                &SdpaOptions::new().with_causal(causal),
            )
            .unwrap();
            println!(
                "{label}, K/V uniform in [-1, 1]{}:",
                if outliers {
                    ", two key channels ×10"
                } else {
                    ""
                }
            );
            run::<i8>("int8 per token", &q, &k, &v, dims, causal, true, &want);
            run::<F8E4M3>("fp8 e4m3 per head", &q, &k, &v, dims, causal, false, &want);
            run::<F8E5M2>("fp8 e5m2 per head", &q, &k, &v, dims, causal, false, &want);
        }
    }
}
