//! Results of the multi-runtime suites and how they are shown: every round's value of every
//! (scenario, metric, runtime) kept, summarised as median with min and max, and the ratio to the
//! suite's baseline runtime measured in the same run. Rendered as a terminal table, JSON lines,
//! or a directory with the raw runs, a Markdown report and SVG plots.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::workload::median;

/// Every round's value of one metric of one scenario on one runtime.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub suite: String,
    pub scenario: String,
    pub metric: String,
    pub unit: String,
    /// Throughput-like (more is better) or cost-like (less is better): the plots and the
    /// Markdown say which way is good.
    pub higher_is_better: bool,
    pub runtime: String,
    pub samples: Vec<f64>,
    /// Why this runtime has no (or not every) value here: a failed scenario stays in the
    /// report, failed.
    pub error: Option<String>,
}

impl Row {
    pub fn median(&self) -> f64 {
        median(&mut self.samples.clone())
    }

    pub fn min(&self) -> f64 {
        self.samples.iter().copied().fold(f64::NAN, f64::min)
    }

    pub fn max(&self) -> f64 {
        self.samples.iter().copied().fold(f64::NAN, f64::max)
    }

    fn group(&self) -> (&str, &str, &str) {
        (&self.suite, &self.scenario, &self.metric)
    }
}

/// Latency samples of one runtime in one scenario (every round's, in microseconds), for CDFs.
#[derive(Clone, Debug, Serialize)]
pub struct Latencies {
    pub suite: String,
    pub scenario: String,
    pub runtime: String,
    pub us: Vec<f64>,
}

/// What a whole run produced.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// The command line and machine the figures come from.
    pub command: String,
    pub machine: String,
    pub rows: Vec<Row>,
    pub latencies: Vec<Latencies>,
    /// The baseline runtime of each suite (ratios are to it).
    pub baselines: BTreeMap<String, String>,
    /// Notes a suite wants printed with its table (what a runtime is, what did not run).
    pub notes: Vec<String>,
}

/// One row's figures as printed and written to JSON.
#[derive(Serialize)]
struct Summary<'a> {
    suite: &'a str,
    scenario: &'a str,
    metric: &'a str,
    unit: &'a str,
    runtime: &'a str,
    median: f64,
    min: f64,
    max: f64,
    baseline: &'a str,
    ratio: f64,
    rounds: usize,
    error: Option<&'a str>,
}

impl Report {
    pub fn new(command: String) -> Report {
        Report {
            command,
            machine: machine_description(),
            ..Report::default()
        }
    }

    /// Adds a suite's rows; ratios are taken against `baseline`'s row of the same metric.
    pub fn add_suite(&mut self, suite: &str, baseline: &str, rows: Vec<Row>, lat: Vec<Latencies>) {
        self.baselines.insert(suite.into(), baseline.into());
        self.rows.extend(rows);
        self.latencies.extend(lat);
    }

    fn baseline_of(&self, row: &Row) -> Option<&Row> {
        let base = self.baselines.get(&row.suite)?;
        self.rows
            .iter()
            .find(|r| r.group() == row.group() && &r.runtime == base)
    }

    /// Summaries grouped by scenario and metric, groups in the order they first appear.
    fn summaries(&self) -> Vec<Summary<'_>> {
        self.groups()
            .into_iter()
            .flatten()
            .map(|r| {
                let base = self.baseline_of(r);
                Summary {
                    suite: &r.suite,
                    scenario: &r.scenario,
                    metric: &r.metric,
                    unit: &r.unit,
                    runtime: &r.runtime,
                    median: r.median(),
                    min: r.min(),
                    max: r.max(),
                    baseline: base.map_or("", |b| b.runtime.as_str()),
                    ratio: base.map_or(f64::NAN, |b| r.median() / b.median()),
                    rounds: r.samples.len(),
                    error: r.error.as_deref(),
                }
            })
            .collect()
    }

    /// JSON lines: one object per row (median, min, max, ratio, rounds, error).
    pub fn json_lines(&self) -> anyhow::Result<String> {
        let mut out = String::new();
        for s in self.summaries() {
            out.push_str(&serde_json::to_string(&s)?);
            out.push('\n');
        }
        Ok(out)
    }

    /// The terminal table: a header per scenario and metric, a line per runtime.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let mut last = None;
        for s in self.summaries() {
            let group = (s.suite, s.scenario, s.metric);
            if last != Some(group) {
                let _ = writeln!(
                    out,
                    "\n{} | {}: {} ({})",
                    s.suite, s.scenario, s.metric, s.unit
                );
                last = Some(group);
            }
            let ratio = if s.ratio.is_finite() {
                format!("{:6.2}x {}", s.ratio, s.baseline)
            } else {
                String::new()
            };
            match (s.error, s.rounds) {
                (Some(e), 0) => {
                    let _ = writeln!(out, "  {:<12} FAILED: {}", s.runtime, first_line(e));
                }
                _ => {
                    let _ = writeln!(
                        out,
                        "  {:<12} {:>10}  [{} .. {}]  {ratio}{}",
                        s.runtime,
                        fmt_num(s.median),
                        fmt_num(s.min),
                        fmt_num(s.max),
                        s.error
                            .map(|e| format!("  (some rounds failed: {})", first_line(e)))
                            .unwrap_or_default()
                    );
                }
            }
        }
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        out
    }

    /// The Markdown report: machine, command, a table per scenario, the plots.
    pub fn markdown(&self, plots: &[(String, String)]) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# netbench report\n");
        let _ = writeln!(out, "Command: `{}`\n", self.command);
        let _ = writeln!(out, "Machine: {}\n", self.machine);
        let _ = writeln!(
            out,
            "Each figure is the median of the rounds, with the smallest and largest round; \
             runtimes take turns round by round (the order rotates), so machine drift falls on \
             all of them alike. The ratio is to the suite's baseline measured in the same run.\n"
        );
        for n in &self.notes {
            let _ = writeln!(out, "- {n}");
        }
        let mut last = None;
        for s in self.summaries() {
            let group = (s.suite, s.scenario, s.metric);
            if last != Some(group) {
                let better = self
                    .rows
                    .iter()
                    .find(|r| r.group() == group)
                    .map_or("", |r| {
                        if r.higher_is_better {
                            "higher is better"
                        } else {
                            "lower is better"
                        }
                    });
                let _ = writeln!(
                    out,
                    "\n### {}: {} ({}, {better})\n\n| runtime | median | min | max | vs {} |\n|---|---:|---:|---:|---:|",
                    s.scenario,
                    s.metric,
                    s.unit,
                    if s.baseline.is_empty() { "baseline" } else { s.baseline }
                );
                last = Some(group);
            }
            if s.rounds == 0 {
                let _ = writeln!(
                    out,
                    "| {} | failed: {} | | | |",
                    s.runtime,
                    first_line(s.error.unwrap_or("no value")).replace('|', "/")
                );
            } else {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} |",
                    s.runtime,
                    fmt_num(s.median),
                    fmt_num(s.min),
                    fmt_num(s.max),
                    if s.ratio.is_finite() {
                        format!("{:.2}x", s.ratio)
                    } else {
                        "-".into()
                    }
                );
            }
        }
        if !plots.is_empty() {
            let _ = writeln!(out, "\n## Plots\n");
            for (title, file) in plots {
                let _ = writeln!(out, "![{title}]({file})\n");
            }
        }
        out
    }

    /// Writes `raw.json` (every sample), `report.md` and the SVG plots into `dir`.
    pub fn write_dir(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("raw.json"), serde_json::to_vec_pretty(self)?)?;
        let plots = crate::plot::all(self, dir)?;
        std::fs::write(dir.join("report.md"), self.markdown(&plots))?;
        Ok(())
    }

    /// The rows of one (suite, scenario, metric), in the order they were added.
    pub fn groups(&self) -> Vec<Vec<&Row>> {
        let mut out: Vec<Vec<&Row>> = Vec::new();
        for r in &self.rows {
            match out.iter_mut().find(|g| g[0].group() == r.group()) {
                Some(g) => g.push(r),
                None => out.push(vec![r]),
            }
        }
        out
    }
}

/// Rows of a two-path suite (subject, baseline) from every round's figures; a unit in `/s` is
/// a rate (more is better), anything else a cost.
pub fn paired_rows<const N: usize>(
    suite: &str,
    columns: &[crate::Column; N],
    names: (&str, &str),
    subject: &[[f64; N]],
    baseline: &[[f64; N]],
) -> Vec<Row> {
    let mut rows = Vec::new();
    for (i, (scenario, metric, unit)) in columns.iter().enumerate() {
        for (runtime, rounds) in [(names.0, subject), (names.1, baseline)] {
            rows.push(Row {
                suite: suite.into(),
                scenario: (*scenario).into(),
                metric: (*metric).into(),
                unit: (*unit).into(),
                higher_is_better: unit.ends_with("/s"),
                runtime: runtime.into(),
                samples: rounds.iter().map(|r| r[i]).collect(),
                error: None,
            });
        }
    }
    rows
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// Three significant figures, without exponent for the sizes these take.
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Kernel, CPU, cores, memory and the KVM module: what a reader needs to compare figures.
fn machine_description() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let mem_gib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / (1 << 20) as f64);
    let kernel = read("/proc/sys/kernel/osrelease");
    // /sys/module lists built-in modules too (and /proc/modules may not exist).
    let mut kvm: Vec<String> = std::fs::read_dir("/sys/module")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|m| m.starts_with("kvm"))
                .collect()
        })
        .unwrap_or_default();
    kvm.sort();
    let kvm = kvm.join(", ");
    format!(
        "Linux {}, {cpu}, {cores} cores, {mem_gib:.0} GiB, KVM modules: {}",
        kernel.trim(),
        if kvm.is_empty() { "none listed" } else { &kvm }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(runtime: &str, samples: &[f64], error: Option<&str>) -> Row {
        Row {
            suite: "net".into(),
            scenario: "bulk".into(),
            metric: "throughput".into(),
            unit: "Gbit/s".into(),
            higher_is_better: true,
            runtime: runtime.into(),
            samples: samples.to_vec(),
            error: error.map(Into::into),
        }
    }

    fn report() -> Report {
        let mut r = Report::new("netbench all".into());
        r.add_suite(
            "net",
            "native",
            vec![
                row("native", &[10.0, 8.0, 12.0], None),
                row("quark", &[5.0, 4.0, 6.0], None),
                row("gvisor", &[], Some("runsc: cannot start\nmore")),
            ],
            vec![Latencies {
                suite: "net".into(),
                scenario: "rr".into(),
                runtime: "quark".into(),
                us: vec![10.0, 20.0, 30.0],
            }],
        );
        r
    }

    #[test]
    fn summaries_have_median_min_max_and_ratio_to_the_baseline() {
        let r = report();
        let s = r.summaries();
        assert_eq!((s[1].median, s[1].min, s[1].max), (5.0, 4.0, 6.0));
        assert_eq!(s[1].ratio, 0.5);
        assert_eq!(s[0].ratio, 1.0);
        assert!(s[2].ratio.is_nan());
        let json = r.json_lines().unwrap();
        assert_eq!(json.lines().count(), 3);
        let quark: serde_json::Value = serde_json::from_str(json.lines().nth(1).unwrap()).unwrap();
        assert_eq!(quark["ratio"], 0.5);
        assert_eq!(quark["baseline"], "native");
    }

    #[test]
    fn a_two_path_suite_keeps_every_round_of_both() {
        let cols: [crate::Column; 2] = [("bulk", "throughput", "Gbit/s"), ("rr", "p50", "us")];
        let rows = paired_rows(
            "s",
            &cols,
            ("a", "b"),
            &[[1.0, 10.0], [3.0, 30.0]],
            &[[2.0, 20.0]],
        );
        assert_eq!(rows.len(), 4);
        assert_eq!(
            (rows[0].runtime.as_str(), rows[0].samples.clone()),
            ("a", vec![1.0, 3.0])
        );
        assert_eq!(
            (rows[3].runtime.as_str(), rows[3].samples.clone()),
            ("b", vec![20.0])
        );
        assert!(rows[0].higher_is_better && !rows[2].higher_is_better);
    }

    #[test]
    fn a_failed_runtime_is_reported_failed_not_left_out() {
        let r = report();
        let table = r.table();
        assert!(
            table.contains("gvisor       FAILED: runsc: cannot start"),
            "{table}"
        );
        assert!(table.contains("0.50x native"), "{table}");
        let md = r.markdown(&[]);
        assert!(
            md.contains("| gvisor | failed: runsc: cannot start | | | |"),
            "{md}"
        );
        assert!(
            md.contains("| quark | 5.00 | 4.00 | 6.00 | 0.50x |"),
            "{md}"
        );
    }

    #[test]
    fn the_output_directory_has_raw_runs_report_and_plots() {
        let dir = std::env::temp_dir().join(format!("netbench-report-{}", std::process::id()));
        report().write_dir(&dir).unwrap();
        let raw: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("raw.json")).unwrap()).unwrap();
        assert_eq!(raw["rows"][0]["samples"][2], 12.0);
        let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
        let svgs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".svg"))
            .collect();
        assert_eq!(svgs.len(), 2, "a bar chart and a CDF: {svgs:?}");
        for svg in &svgs {
            assert!(
                md.contains(svg.as_str()),
                "{svg} not linked from the report"
            );
            let text = std::fs::read_to_string(dir.join(svg)).unwrap();
            assert!(text.starts_with("<svg") && text.contains("quark"), "{svg}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
