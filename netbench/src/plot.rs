//! SVG plots of a report, drawn with plotters: a bar chart (median, with a min-max whisker) per
//! scenario and metric, and a CDF per latency scenario with a line per runtime.

use std::path::Path;

use anyhow::anyhow;
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::report::{Latencies, Report, Row};

const SIZE: (u32, u32) = (720, 400);
/// One color per runtime, the same in every plot (by first appearance in the report).
const COLORS: [RGBColor; 8] = [
    RGBColor(110, 110, 110),
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
    RGBColor(140, 86, 75),
];

/// The color of `runtime` in `report`.
fn color_of(report: &Report, runtime: &str) -> RGBColor {
    let mut seen: Vec<&str> = Vec::new();
    for r in &report.rows {
        if !seen.contains(&r.runtime.as_str()) {
            seen.push(&r.runtime);
        }
    }
    let i = seen
        .iter()
        .position(|r| *r == runtime)
        .unwrap_or(seen.len());
    COLORS[i % COLORS.len()]
}
/// At most this many points per CDF line: enough for the eye, keeps the file small.
const CDF_POINTS: usize = 800;

/// Draws every plot of `report` into `dir`; (title, file name) of each.
pub fn all(report: &Report, dir: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let mut plots = Vec::new();
    for (i, group) in report.groups().into_iter().enumerate() {
        let measured: Vec<&Row> = group
            .iter()
            .copied()
            .filter(|r| !r.samples.is_empty())
            .collect();
        if measured.is_empty() {
            continue;
        }
        let r0 = group[0];
        let title = format!("{}: {} ({})", r0.scenario, r0.metric, r0.unit);
        let file = format!(
            "{:02}-{}.svg",
            i + 1,
            slug(&format!("{} {}", r0.scenario, r0.metric))
        );
        let colors: Vec<RGBColor> = group.iter().map(|r| color_of(report, &r.runtime)).collect();
        bars(
            &dir.join(&file),
            &title,
            r0.higher_is_better,
            &group,
            &colors,
        )?;
        plots.push((title, file));
    }
    let mut scenarios: Vec<(&str, &str)> = Vec::new();
    for l in &report.latencies {
        if !scenarios.contains(&(l.suite.as_str(), l.scenario.as_str())) {
            scenarios.push((&l.suite, &l.scenario));
        }
    }
    for (suite, scenario) in scenarios {
        let lines: Vec<&Latencies> = report
            .latencies
            .iter()
            .filter(|l| l.suite == suite && l.scenario == scenario && !l.us.is_empty())
            .collect();
        if lines.is_empty() {
            continue;
        }
        let title = format!("{scenario}: latency CDF");
        let file = format!("cdf-{}.svg", slug(scenario));
        let colors: Vec<RGBColor> = lines.iter().map(|l| color_of(report, &l.runtime)).collect();
        cdf(&dir.join(&file), &title, &lines, &colors)?;
        plots.push((title, file));
    }
    Ok(plots)
}

/// A file-name-safe form of a title.
fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').chars().take(60).collect()
}

fn plot_err<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow!("drawing a plot: {e}")
}

/// Bars of the medians with a whisker from min to max; a runtime that failed gets a label in
/// place of its bar.
fn bars(
    path: &Path,
    title: &str,
    higher_is_better: bool,
    rows: &[&Row],
    colors: &[RGBColor],
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let top = rows
        .iter()
        .map(|r| r.max())
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.15;
    let n = rows.len() as i32;
    let caption = format!(
        "{title}, {}",
        if higher_is_better {
            "higher is better"
        } else {
            "lower is better"
        }
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        // Segments 0..=n-1: one per runtime.
        .build_cartesian_2d((0..n - 1).into_segmented(), 0.0..top)
        .map_err(plot_err)?;
    let names: Vec<String> = rows.iter().map(|r| r.runtime.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(rows.len())
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => names.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .y_desc(rows[0].unit.as_str())
        .draw()
        .map_err(plot_err)?;
    for (i, r) in rows.iter().enumerate() {
        let i = i as i32;
        let color = colors[i as usize];
        if r.samples.is_empty() {
            chart
                .draw_series(std::iter::once(Text::new(
                    "failed",
                    (SegmentValue::CenterOf(i), top * 0.05),
                    ("sans-serif", 14).into_font().color(&RED),
                )))
                .map_err(plot_err)?;
            continue;
        }
        let mut bar = Rectangle::new(
            [
                (SegmentValue::Exact(i), 0.0),
                (SegmentValue::Exact(i + 1), r.median()),
            ],
            color.filled(),
        );
        bar.set_margin(0, 0, 14, 14);
        chart.draw_series(std::iter::once(bar)).map_err(plot_err)?;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![
                    (SegmentValue::CenterOf(i), r.min()),
                    (SegmentValue::CenterOf(i), r.max()),
                ],
                BLACK.stroke_width(2),
            )))
            .map_err(plot_err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                crate::report::fmt_num(r.median()),
                (
                    SegmentValue::CenterOf(i),
                    r.max().max(r.median()) + top * 0.01,
                ),
                TextStyle::from(("sans-serif", 13).into_font())
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            )))
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)?;
    Ok(())
}

/// The fraction of round trips at or under each latency, one line per runtime, on a log axis.
fn cdf(path: &Path, title: &str, lines: &[&Latencies], colors: &[RGBColor]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let all = lines.iter().flat_map(|l| l.us.iter().copied());
    let (lo, hi) = all.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let (lo, hi) = (lo.max(0.1) * 0.9, hi.max(lo * 2.0) * 1.1);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(52)
        .build_cartesian_2d((lo..hi).log_scale(), 0.0..1.0)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("round trip, us (log scale)")
        .y_desc("fraction at or under")
        .draw()
        .map_err(plot_err)?;
    for (i, l) in lines.iter().enumerate() {
        let mut sorted = l.us.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let n = sorted.len();
        let step = n.div_ceil(CDF_POINTS).max(1);
        let mut points: Vec<(f64, f64)> = (0..n)
            .step_by(step)
            .map(|k| (sorted[k], (k + 1) as f64 / n as f64))
            .collect();
        points.push((sorted[n - 1], 1.0));
        let color = colors[i];
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(plot_err)?
            .label(l.runtime.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}
