//! A latency-versus-throughput plot (SVG, no dependencies) from rate sweeps: one
//! p50 and one p99 line per target. Latency is on a log scale: near saturation it
//! climbs by orders of magnitude.

use crate::report::Summary;
use std::fmt::Write;

const W: f64 = 800.0;
const H: f64 = 500.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// One line of points (throughput req/s, latency ms).
struct Series {
    label: String,
    dashed: bool,
    colour: &'static str,
    points: Vec<(f64, f64)>,
}

/// SVG text for the sweeps in `runs`, grouped by target kind.
#[must_use]
pub fn latency_vs_throughput(title: &str, runs: &[Summary]) -> String {
    let mut kinds: Vec<&str> = runs.iter().map(|r| r.config.target.kind.as_str()).collect();
    kinds.dedup();
    let mut series = Vec::new();
    for (k, kind) in kinds.iter().enumerate() {
        let mut of_kind: Vec<&Summary> = runs
            .iter()
            .filter(|r| r.config.target.kind == *kind && r.committed > 0)
            .collect();
        of_kind.sort_by(|a, b| a.throughput_rps.total_cmp(&b.throughput_rps));
        for (label, dashed, pick) in [
            (
                "p50",
                false,
                (|r: &Summary| r.latency_ms.p50) as fn(&Summary) -> f64,
            ),
            ("p99", true, |r: &Summary| r.latency_ms.p99),
        ] {
            series.push(Series {
                label: format!("{kind} {label}"),
                dashed,
                colour: COLOURS[k % COLOURS.len()],
                points: of_kind
                    .iter()
                    .map(|r| (r.throughput_rps, pick(r).max(0.01)))
                    .collect(),
            });
        }
    }
    render(title, &series)
}

fn render(title: &str, series: &[Series]) -> String {
    let all = series.iter().flat_map(|s| s.points.iter());
    let x_max = nice_ceiling(all.clone().map(|p| p.0).fold(1.0, f64::max));
    let y_lo = all
        .clone()
        .map(|p| p.1)
        .fold(f64::MAX, f64::min)
        .min(1.0)
        .log10()
        .floor();
    let y_hi = all
        .map(|p| p.1)
        .fold(1.0, f64::max)
        .log10()
        .ceil()
        .max(y_lo + 1.0);
    let px = |x: f64| LEFT + x / x_max * (W - LEFT - RIGHT);
    let py = |y: f64| H - BOTTOM - (y.log10() - y_lo) / (y_hi - y_lo) * (H - TOP - BOTTOM);

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        W / 2.0,
        escape(title)
    );
    // Axes, grid and ticks.
    for i in 0..=5 {
        let x = x_max * f64::from(i) / 5.0;
        let _ = writeln!(
            s,
            r##"<line x1="{0}" y1="{TOP}" x2="{0}" y2="{1}" stroke="#ddd"/><text x="{0}" y="{2}" text-anchor="middle">{3:.0}</text>"##,
            px(x),
            H - BOTTOM,
            H - BOTTOM + 16.0,
            x
        );
    }
    let mut decade = y_lo;
    while decade <= y_hi {
        let y = 10f64.powf(decade);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{0}" x2="{1}" y2="{0}" stroke="#ddd"/><text x="{2}" y="{3}" text-anchor="end">{4}</text>"##,
            py(y),
            W - RIGHT,
            LEFT - 6.0,
            py(y) + 4.0,
            format_ms(y)
        );
        decade += 1.0;
    }
    let _ = writeln!(
        s,
        r#"<line x1="{LEFT}" y1="{0}" x2="{1}" y2="{0}" stroke="black"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{0}" stroke="black"/>"#,
        H - BOTTOM,
        W - RIGHT
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">committed requests per second</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 15.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(18,{}) rotate(-90)" text-anchor="middle">latency (ms, log scale)</text>"#,
        (TOP + H - BOTTOM) / 2.0
    );
    // Lines, points and legend.
    for (i, line) in series.iter().enumerate() {
        let pts: Vec<String> = line
            .points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let dash = if line.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
            pts.join(" "),
            line.colour
        );
        for (x, y) in &line.points {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                px(*x),
                py(*y),
                line.colour
            );
        }
        let ly = TOP + 10.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{0}" y1="{ly}" x2="{1}" y2="{ly}" stroke="{2}" stroke-width="2"{dash}/><text x="{3}" y="{4}">{5}</text>"#,
            LEFT + 15.0,
            LEFT + 45.0,
            line.colour,
            LEFT + 52.0,
            ly + 4.0,
            escape(&line.label)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// 1, 2 or 5 times a power of ten, at least `x`.
fn nice_ceiling(x: f64) -> f64 {
    let p = 10f64.powf(x.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|v| *v >= x)
        .unwrap_or(10.0 * p)
}

fn format_ms(y: f64) -> String {
    if y >= 1.0 {
        format!("{y:.0}")
    } else {
        format!("{y}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ceilings() {
        assert!((nice_ceiling(3.2) - 5.0).abs() < 1e-9);
        assert!((nice_ceiling(1200.0) - 2000.0).abs() < 1e-9);
        assert!((nice_ceiling(10_000.0) - 10_000.0).abs() < 1e-9);
    }

    #[test]
    fn one_polyline_per_series_with_every_point() {
        let series = vec![Series {
            label: "a <p50>".into(),
            dashed: false,
            colour: COLOURS[0],
            points: vec![(100.0, 1.0), (200.0, 2.0), (400.0, 50.0)],
        }];
        let svg = render("t", &series);
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains("a &lt;p50&gt;"));
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }
}
