//! Dependency-free SVG line charts: panels stacked vertically, each with its own axes, legend
//! and optional logarithmic y axis.

use std::fmt::Write;

/// One line: points (x, y) drawn in the given order. Non-finite points are skipped, as are
/// non-positive y values on a logarithmic axis.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// One chart with its own axes.
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_y: bool,
    pub series: Vec<Series>,
}

const WIDTH: f64 = 900.0;
const TITLE_HEIGHT: f64 = 40.0;
const PANEL_HEIGHT: f64 = 300.0;
/// Plot area inside a panel.
const PLOT_LEFT: f64 = 80.0;
const PLOT_RIGHT: f64 = 700.0;
const PLOT_TOP: f64 = 34.0;
const PLOT_BOTTOM: f64 = 250.0;
/// Legend column to the right of the plot area.
const LEGEND_LEFT: f64 = 715.0;
const LEGEND_ROW: f64 = 18.0;
const LEGEND_CHARS: usize = 24;
const TARGET_TICKS: usize = 5;
/// Points of a series from which markers are left out (the line alone is readable).
const MARKER_LIMIT: usize = 40;

const PALETTE: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// Colour of the i-th series: a fixed palette, then hues spread by the golden angle.
fn colour(i: usize) -> String {
    match PALETTE.get(i) {
        Some(c) => (*c).to_string(),
        None => format!("hsl({:.0},65%,40%)", (i as f64 * 137.508) % 360.0),
    }
}

/// Escapes text for XML content and attribute values.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters other than tab/newline are not allowed in XML 1.0.
            c if (c as u32) < 0x20 && c != '\t' && c != '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// An axis: the value range shown and the tick values with their labels.
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    ticks: Vec<(f64, String)>,
}

impl Axis {
    /// Position of `v` in [0, 1] along the axis.
    fn frac(&self, v: f64) -> f64 {
        let (v, lo, hi) = if self.log {
            (v.log10(), self.lo.log10(), self.hi.log10())
        } else {
            (v, self.lo, self.hi)
        };
        let f = if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
        if f.is_finite() {
            f.clamp(0.0, 1.0)
        } else {
            0.5
        }
    }
}

/// 1, 2, 2.5 or 5 times a power of ten, close to `raw`.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let exp = raw.log10().floor();
    let base = 10f64.powf(exp);
    let f = raw / base;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 2.5 {
        2.5
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * base
}

/// Label of a tick value, with as many decimals as the step needs.
fn format_tick(v: f64, step: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-4..1e9).contains(&a) {
        return trim_exp(format!("{v:.2e}"));
    }
    if a >= 1e6 && step >= 1e5 {
        return trim_decimals(format!("{:.2}", v / 1e6)) + "M";
    }
    if a >= 1e4 && step >= 1e3 {
        return trim_decimals(format!("{:.2}", v / 1e3)) + "k";
    }
    let decimals = if step > 0.0 && step.is_finite() {
        (-step.log10().floor()).clamp(0.0, 6.0) as usize + 1
    } else {
        2
    };
    trim_decimals(format!("{v:.decimals$}"))
}

fn trim_decimals(s: String) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// "1.50e6" -> "1.5e6".
fn trim_exp(s: String) -> String {
    match s.split_once('e') {
        Some((m, e)) => format!("{}e{e}", trim_decimals(m.to_string())),
        None => s,
    }
}

/// A linear axis over [min, max] (None: no data), widened to nice tick bounds.
fn linear_axis(range: Option<(f64, f64)>, include_zero: bool) -> Axis {
    let (mut lo, mut hi) = range.unwrap_or((0.0, 1.0));
    if include_zero {
        lo = lo.min(0.0);
        hi = hi.max(0.0);
    }
    if hi - lo <= 0.0 || !(hi - lo).is_finite() {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.5 };
        lo -= pad;
        hi += pad;
        if include_zero && range.is_some_and(|(a, _)| a >= 0.0) {
            lo = lo.max(0.0);
        }
    }
    let step = nice_step((hi - lo) / TARGET_TICKS as f64);
    let lo = (lo / step).floor() * step;
    let hi = (hi / step).ceil() * step;
    let mut ticks = Vec::new();
    let n = ((hi - lo) / step).round() as i64;
    for i in 0..=n.clamp(0, 100) {
        let v = lo + i as f64 * step;
        // Avoid "-0" and float dust such as 0.30000000000000004.
        let v = if (v / step).abs() < 1e-9 { 0.0 } else { v };
        ticks.push((v, format_tick(v, step)));
    }
    Axis {
        lo,
        hi,
        log: false,
        ticks,
    }
}

/// A base-10 logarithmic axis over [min, max] (both > 0; None: no data), widened to decades.
fn log_axis(range: Option<(f64, f64)>) -> Axis {
    let (lo, hi) = range.unwrap_or((1.0, 10.0));
    let mut lo_exp = lo.log10().floor();
    let mut hi_exp = hi.log10().ceil();
    if !lo_exp.is_finite() || !hi_exp.is_finite() {
        (lo_exp, hi_exp) = (0.0, 1.0);
    }
    if hi_exp <= lo_exp {
        hi_exp = lo_exp + 1.0;
    }
    let decades = (hi_exp - lo_exp) as i64;
    let every = ((decades as f64 / TARGET_TICKS as f64).ceil() as i64).max(1);
    let mut ticks = Vec::new();
    let mut e = lo_exp as i64;
    while e <= hi_exp as i64 {
        let v = 10f64.powi(e as i32);
        ticks.push((v, format_tick(v, v)));
        e += every;
    }
    // With a single decade, label its 2x and 5x too.
    if decades == 1 {
        let base = 10f64.powf(lo_exp);
        for m in [2.0, 5.0] {
            ticks.push((m * base, format_tick(m * base, base)));
        }
    }
    Axis {
        lo: 10f64.powf(lo_exp),
        hi: 10f64.powf(hi_exp),
        log: true,
        ticks,
    }
}

fn min_max(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// Renders the panels stacked vertically under `title` as one SVG document.
pub fn svg(title: &str, panels: &[Panel]) -> String {
    let height = TITLE_HEIGHT + PANEL_HEIGHT * panels.len().max(1) as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH:.0}" height="{height:.0}" viewBox="0 0 {WIDTH:.0} {height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="26" text-anchor="middle" font-size="18" font-weight="bold">{}</text>"#,
        WIDTH / 2.0,
        xml_escape(title)
    );
    for (i, panel) in panels.iter().enumerate() {
        let top = TITLE_HEIGHT + PANEL_HEIGHT * i as f64;
        let _ = writeln!(out, r#"<g transform="translate(0,{top:.1})">"#);
        render_panel(&mut out, panel);
        out.push_str("</g>\n");
    }
    out.push_str("</svg>\n");
    out
}

fn render_panel(out: &mut String, panel: &Panel) {
    // The drawable points of every series.
    let series: Vec<Vec<(f64, f64)>> = panel
        .series
        .iter()
        .map(|s| {
            s.points
                .iter()
                .copied()
                .filter(|&(x, y)| x.is_finite() && y.is_finite() && (!panel.log_y || y > 0.0))
                .collect()
        })
        .collect();
    let all = || series.iter().flatten();
    let x_axis = linear_axis(min_max(all().map(|p| p.0)), false);
    let y_range = min_max(all().map(|p| p.1));
    let y_axis = if panel.log_y {
        log_axis(y_range)
    } else {
        linear_axis(y_range, true)
    };
    let px = |x: f64| PLOT_LEFT + x_axis.frac(x) * (PLOT_RIGHT - PLOT_LEFT);
    let py = |y: f64| PLOT_BOTTOM - y_axis.frac(y) * (PLOT_BOTTOM - PLOT_TOP);

    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="20" text-anchor="middle" font-size="14" font-weight="bold">{}</text>"#,
        (PLOT_LEFT + PLOT_RIGHT) / 2.0,
        xml_escape(&panel.title)
    );
    // Grid lines and tick labels.
    for (v, label) in &y_axis.ticks {
        let y = py(*v);
        let _ = writeln!(
            out,
            r##"<line x1="{PLOT_LEFT:.1}" y1="{y:.1}" x2="{PLOT_RIGHT:.1}" y2="{y:.1}" stroke="#e0e0e0"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            PLOT_LEFT - 6.0,
            y + 4.0,
            xml_escape(label)
        );
    }
    for (v, label) in &x_axis.ticks {
        let x = px(*v);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{PLOT_TOP:.1}" x2="{x:.1}" y2="{PLOT_BOTTOM:.1}" stroke="#e0e0e0"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            PLOT_BOTTOM + 16.0,
            xml_escape(label)
        );
    }
    // Axes and their labels.
    let _ = writeln!(
        out,
        r#"<rect x="{PLOT_LEFT:.1}" y="{PLOT_TOP:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="black"/>"#,
        PLOT_RIGHT - PLOT_LEFT,
        PLOT_BOTTOM - PLOT_TOP
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        (PLOT_LEFT + PLOT_RIGHT) / 2.0,
        PLOT_BOTTOM + 36.0,
        xml_escape(&panel.x_label)
    );
    let mid_y = (PLOT_TOP + PLOT_BOTTOM) / 2.0;
    let y_label = if panel.log_y {
        format!("{} (log)", panel.y_label)
    } else {
        panel.y_label.clone()
    };
    let _ = writeln!(
        out,
        r#"<text x="18" y="{mid_y:.1}" text-anchor="middle" transform="rotate(-90 18 {mid_y:.1})">{}</text>"#,
        xml_escape(&y_label)
    );
    // Lines, markers and the legend.
    for (i, (s, points)) in panel.series.iter().zip(&series).enumerate() {
        let c = colour(i);
        if points.len() > 1 {
            let coords: Vec<String> = points
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{}"/>"#,
                coords.join(" ")
            );
        }
        if !points.is_empty() && points.len() <= MARKER_LIMIT {
            for &(x, y) in points {
                let _ = writeln!(
                    out,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{c}"/>"#,
                    px(x),
                    py(y)
                );
            }
        }
        let ly = PLOT_TOP + 8.0 + LEGEND_ROW * i as f64;
        let mut name: String = s.name.chars().take(LEGEND_CHARS).collect();
        if s.name.chars().count() > LEGEND_CHARS {
            name.push('…');
        }
        if points.is_empty() {
            name.push_str(" (no data)");
        }
        let _ = writeln!(
            out,
            r#"<line x1="{LEGEND_LEFT:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{c}" stroke-width="3"/><text x="{:.1}" y="{:.1}"><title>{}</title>{}</text>"#,
            LEGEND_LEFT + 18.0,
            LEGEND_LEFT + 24.0,
            ly + 4.0,
            xml_escape(&s.name),
            xml_escape(&name)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_well_formed(doc: &str) {
        assert!(doc.starts_with("<svg"), "{doc}");
        assert_eq!(doc.matches("<svg").count(), 1);
        assert_eq!(doc.matches("</svg>").count(), 1);
        assert!(doc.trim_end().ends_with("</svg>"));
        assert_eq!(doc.matches("<g ").count(), doc.matches("</g>").count());
        assert_eq!(doc.matches("<text").count(), doc.matches("</text>").count());
        for bad in ["NaN", "inf", "Infinity"] {
            assert!(!doc.contains(bad), "{bad} in output:\n{doc}");
        }
        // Every '&' starts an entity.
        for (i, _) in doc.match_indices('&') {
            let rest = &doc[i..];
            assert!(
                ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                    .iter()
                    .any(|e| rest.starts_with(e)),
                "bare & at {i}"
            );
        }
    }

    fn series(name: &str, points: Vec<(f64, f64)>) -> Series {
        Series {
            name: name.into(),
            points,
        }
    }

    fn panel(log_y: bool, series: Vec<Series>) -> Panel {
        Panel {
            title: "Throughput".into(),
            x_label: "time (s)".into(),
            y_label: "MB/s".into(),
            log_y,
            series,
        }
    }

    #[test]
    fn renders_series_names_and_axes() {
        let doc = svg(
            "Produce <acks=all> & more",
            &[
                panel(
                    false,
                    vec![
                        series(
                            "strom",
                            (0..50)
                                .map(|i| (f64::from(i), 100.0 + f64::from(i)))
                                .collect(),
                        ),
                        series("kafka", vec![(0.0, 80.0), (49.0, 95.0)]),
                    ],
                ),
                panel(
                    true,
                    vec![series(
                        "p99 \"latency\"",
                        vec![(1.0, 0.5), (2.0, 30.0), (3.0, 12_000.0)],
                    )],
                ),
            ],
        );
        check_well_formed(&doc);
        for name in [
            "strom",
            "kafka",
            "p99 &quot;latency&quot;",
            "Produce &lt;acks=all&gt; &amp; more",
        ] {
            assert!(doc.contains(name), "{name} missing");
        }
        assert!(doc.contains("polyline"));
        assert_eq!(doc.matches("<g ").count(), 2);
    }

    #[test]
    fn degenerate_inputs() {
        let doc = svg(
            "edge cases",
            &[
                panel(false, vec![series("empty", vec![])]),
                panel(false, vec![series("single", vec![(3.0, 7.0)])]),
                panel(false, vec![series("flat", vec![(1.0, 0.0), (2.0, 0.0)])]),
                panel(false, vec![series("same x", vec![(5.0, 1.0), (5.0, 2.0)])]),
                panel(
                    true,
                    vec![series("log nonpositive", vec![(1.0, 0.0), (2.0, -3.0)])],
                ),
                panel(true, vec![series("log single", vec![(1.0, 42.0)])]),
                panel(
                    true,
                    vec![series("log huge", vec![(0.0, 1e-3), (1.0, 1e12)])],
                ),
                panel(
                    false,
                    vec![series(
                        "nan",
                        vec![(f64::NAN, 1.0), (1.0, f64::INFINITY), (2.0, -1e-7)],
                    )],
                ),
                panel(false, vec![]),
            ],
        );
        check_well_formed(&doc);
        for name in [
            "empty",
            "single",
            "flat",
            "same x",
            "log nonpositive",
            "log single",
            "log huge",
            "nan",
        ] {
            assert!(doc.contains(name), "{name} missing");
        }
        // The single point is still drawn.
        assert!(doc.contains("<circle"));
        check_well_formed(&svg("no panels", &[]));
    }

    #[test]
    fn many_series_get_distinct_colours() {
        let many: Vec<Series> = (0..15)
            .map(|i| series(&format!("s{i}"), vec![(0.0, f64::from(i)), (1.0, 1.0)]))
            .collect();
        let doc = svg("many", &[panel(false, many)]);
        check_well_formed(&doc);
        let colours: std::collections::HashSet<String> = (0..15).map(colour).collect();
        assert_eq!(colours.len(), 15);
    }

    #[test]
    fn nice_ticks() {
        let a = linear_axis(Some((0.0, 97.0)), false);
        let labels: Vec<&str> = a.ticks.iter().map(|t| t.1.as_str()).collect();
        assert_eq!(labels, ["0", "20", "40", "60", "80", "100"]);
        let a = linear_axis(Some((0.1, 0.35)), false);
        assert!(
            a.ticks.iter().all(|t| t.1.len() <= 5),
            "{:?}",
            a.ticks.iter().map(|t| &t.1).collect::<Vec<_>>()
        );
        let a = linear_axis(Some((0.0, 2_500_000.0)), false);
        assert_eq!(a.ticks.last().unwrap().1, "2.5M");
        let a = log_axis(Some((3.0, 7000.0)));
        let labels: Vec<&str> = a.ticks.iter().map(|t| t.1.as_str()).collect();
        assert_eq!(labels, ["1", "10", "100", "1000", "10k"]);
        assert!(linear_axis(None, true).ticks.len() >= 2);
        assert_eq!(xml_escape("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&apos;");
    }
}
