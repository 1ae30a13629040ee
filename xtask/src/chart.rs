//! `target/bench/gemm.svg`: GFLOP/s of the square GEMMs against `n`, one line per variant
//! and peer at one thread, each ISA's measured FMA peak drawn as a dashed line in its colour.

use crate::report::{Machine, Record};
use crate::Result;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

/// Points `(n, GFLOP/s)` of square GEMM cases at `threads`, per implementation, sorted by n.
pub fn square_gemm_series(records: &[Record], threads: usize) -> BTreeMap<String, Vec<(f64, f64)>> {
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for r in records {
        if r.suite != "gemm" || r.threads != threads {
            continue;
        }
        if let Ok(n) = r.case.parse::<usize>() {
            series
                .entry(r.imp.clone())
                .or_default()
                .push((n as f64, r.gflops));
        }
    }
    for pts in series.values_mut() {
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    series
}

const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Draws the chart into `path`. Returns `Ok(false)` (and writes nothing) when there are no
/// single-thread square GEMM results.
///
/// # Errors
/// When the SVG cannot be written.
pub fn gemm_chart(path: &Path, records: &[Record], machine: &Machine) -> Result<bool> {
    let series = square_gemm_series(records, 1);
    if series.is_empty() {
        return Ok(false);
    }
    let colour_of = |i: usize| COLOURS[i % COLOURS.len()];
    // One dashed line per distinct peak (scalar and portable share theirs), in the colour
    // of the first variant that has it.
    let mut peaks: Vec<(f64, Vec<String>, RGBColor)> = Vec::new();
    for (i, name) in series.keys().enumerate() {
        let Some(p) = machine.peak(Some(name), 1) else {
            continue;
        };
        match peaks.iter_mut().find(|e| e.0 == p) {
            Some(e) => e.1.push(name.clone()),
            None => peaks.push((p, vec![name.clone()], colour_of(i))),
        }
    }
    let (mut x_lo, mut x_hi) = (f64::INFINITY, f64::NEG_INFINITY);
    let mut y_hi = 0.0f64;
    for pts in series.values() {
        for &(n, g) in pts {
            x_lo = x_lo.min(n.log2());
            x_hi = x_hi.max(n.log2());
            y_hi = y_hi.max(g);
        }
    }
    for (p, _, _) in &peaks {
        y_hi = y_hi.max(*p);
    }
    if x_hi - x_lo < 1.0 {
        x_lo -= 0.5;
        x_hi += 0.5;
    }
    let y_hi = if y_hi > 0.0 { y_hi * 1.08 } else { 1.0 };

    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| format!("cannot draw {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let title = format!("SGEMM, square, 1 thread: {}", machine.cpu);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x_lo - 0.1..x_hi + 0.1, 0.0..y_hi)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("n (m = k = n)")
        .max_light_lines(2)
        .y_desc("GFLOP/s")
        .x_labels((x_hi - x_lo).round() as usize + 1)
        .x_label_formatter(&|x| format!("{}", 2f64.powf(*x).round()))
        .draw()
        .map_err(|e| err(&e))?;

    for (i, (name, pts)) in series.iter().enumerate() {
        let c = colour_of(i);
        let line: Vec<(f64, f64)> = pts.iter().map(|&(n, g)| (n.log2(), g)).collect();
        chart
            .draw_series(LineSeries::new(line.clone(), c.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(line.into_iter().map(|p| Circle::new(p, 3, c.filled())))
            .map_err(|e| err(&e))?;
    }
    for (peak, names, c) in peaks {
        chart
            .draw_series(DashedLineSeries::new(
                vec![(x_lo - 0.1, peak), (x_hi + 0.1, peak)],
                6,
                4,
                c.stroke_width(1),
            ))
            .map_err(|e| err(&e))?
            .label(format!("{} peak {peak:.0}", names.join("/")))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(case: &str, imp: &str, threads: usize, gflops: f64) -> Record {
        Record {
            suite: "gemm".into(),
            case: case.into(),
            imp: imp.into(),
            threads,
            shape: String::new(),
            median_s: 1.0,
            min_s: 1.0,
            max_s: 1.0,
            gflops,
            pct_peak: None,
            gbs: 0.0,
            ..Record::default()
        }
    }

    #[test]
    fn series_keep_square_single_thread_gemm_sorted() {
        let recs = [
            rec("256", "avx2", 1, 3.0),
            rec("64", "avx2", 1, 1.0),
            rec("64x64x256", "avx2", 1, 9.0),
            rec("64", "avx2", 2, 9.0),
            rec("64", "matrixmultiply", 1, 2.0),
        ];
        let s = square_gemm_series(&recs, 1);
        assert_eq!(s["avx2"], vec![(64.0, 1.0), (256.0, 3.0)]);
        assert_eq!(s["matrixmultiply"], vec![(64.0, 2.0)]);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn chart_is_an_svg_with_a_peak_line() {
        let dir = std::env::temp_dir().join(format!("xtask-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gemm.svg");
        let mut m = Machine::default();
        m.peak_gflops
            .entry("avx2".into())
            .or_default()
            .insert("1".into(), 50.0);
        let recs = [rec("64", "avx2", 1, 10.0), rec("128", "avx2", 1, 20.0)];
        assert!(gemm_chart(&path, &recs, &m).unwrap());
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("avx2 peak 50"),
            "{svg}"
        );
        assert!(!gemm_chart(&dir.join("none.svg"), &[], &m).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
