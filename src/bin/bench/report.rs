//! Figures, ratios, targets, the machine description, the markdown table
//! and the JSON file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use serde::Serialize;

/// Median, min and max of several runs.
#[derive(Debug, Clone, Serialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: Vec<f64>,
}

impl Stat {
    pub fn of(runs: &[f64]) -> Option<Stat> {
        if runs.is_empty() {
            return None;
        }
        let mut v = runs.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stat {
            median,
            min: v[0],
            max: v[n - 1],
            runs: runs.to_vec(),
        })
    }
}

/// The raw outcome of one side (Switchyard, BullMQ or Temporal): values per
/// figure id, or why a figure has none.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Side {
    pub values: BTreeMap<String, Vec<f64>>,
    /// Figure id (or group prefix ending in `.`) to "n/a (...)",
    /// "skipped: ..." or "error: ...".
    pub notes: BTreeMap<String, String>,
}

impl Side {
    pub fn push(&mut self, id: &str, v: f64) {
        self.values.entry(id.to_string()).or_default().push(v);
    }

    pub fn note(&mut self, id_or_prefix: &str, text: impl Into<String>) {
        self.notes
            .entry(id_or_prefix.to_string())
            .or_insert_with(|| text.into());
    }

    pub fn stat(&self, id: &str) -> Option<Stat> {
        self.values.get(id).and_then(|v| Stat::of(v))
    }

    /// The note that applies to `id`: its own, or its longest prefix's.
    pub fn note_for(&self, id: &str) -> Option<&str> {
        if let Some(n) = self.notes.get(id).or_else(|| self.notes.get("*")) {
            return Some(n);
        }
        self.notes
            .iter()
            .filter(|(k, _)| k.ends_with('.') && id.starts_with(k.as_str()))
            .max_by_key(|(k, _)| k.len())
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Higher,
    Lower,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// Per second.
    PerSec,
    Ms,
    /// Microseconds (CPU time per operation).
    Us,
    Secs,
    MiB,
    /// A number of tasks.
    Count,
    /// A ratio (targets only).
    Ratio,
}

impl Unit {
    pub fn name(self) -> &'static str {
        match self {
            Unit::PerSec => "/s",
            Unit::Ms => "ms",
            Unit::Us => "µs",
            Unit::Secs => "s",
            Unit::MiB => "MiB",
            Unit::Count => "tasks",
            Unit::Ratio => "×",
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub id: String,
    pub group: String,
    pub label: String,
    pub unit: Unit,
    pub better: Better,
    pub switchyard: Option<Stat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub switchyard_note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_value: Option<Stat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_note: Option<String>,
    /// Switchyard / peer for throughput; peer / Switchyard for latency, time
    /// and memory: above 1 means Switchyard is better.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
}

/// A row definition: Switchyard's figure id and the peer's, if any.
pub struct RowDef {
    pub id: String,
    pub label: String,
    pub unit: Unit,
    pub better: Better,
    pub peer: Option<(&'static str, String, String)>,
    /// Switchyard's figure, when it is not `id` (a second row that sets
    /// the same figure against another peer).
    pub sy_id: Option<String>,
}

impl RowDef {
    pub fn new(
        id: impl Into<String>,
        label: impl Into<String>,
        unit: Unit,
        better: Better,
    ) -> RowDef {
        RowDef {
            id: id.into(),
            label: label.into(),
            unit,
            better,
            peer: None,
            sy_id: None,
        }
    }

    /// Switchyard's side of this row is the figure `sy_id`.
    pub fn of(mut self, sy_id: impl Into<String>) -> RowDef {
        self.sy_id = Some(sy_id.into());
        self
    }

    pub fn vs(
        mut self,
        peer: &'static str,
        peer_id: impl Into<String>,
        peer_label: impl Into<String>,
    ) -> RowDef {
        self.peer = Some((peer, peer_id.into(), peer_label.into()));
        self
    }
}

pub fn build(rows: Vec<RowDef>, sides: &BTreeMap<&'static str, Side>) -> Vec<Figure> {
    let empty = Side::default();
    let sy = sides.get("switchyard").unwrap_or(&empty);
    rows.into_iter()
        .map(|r| {
            let group = r.id.split('.').next().unwrap_or("").to_string();
            let sy_id = r.sy_id.as_deref().unwrap_or(&r.id);
            let switchyard = sy.stat(sy_id);
            let switchyard_note = if switchyard.is_none() {
                Some(sy.note_for(sy_id).unwrap_or("not run").to_string())
            } else {
                None
            };
            let (mut peer, mut peer_label, mut peer_value, mut peer_note, mut ratio) =
                (None, None, None, None, None);
            if let Some((p, pid, plabel)) = &r.peer {
                let side = sides.get(p).unwrap_or(&empty);
                peer = Some(p.to_string());
                peer_label = Some(plabel.clone());
                peer_value = side.stat(pid);
                if peer_value.is_none() {
                    peer_note = Some(side.note_for(pid).unwrap_or("not run").to_string());
                }
                if let (Some(s), Some(pv)) = (&switchyard, &peer_value) {
                    ratio = match r.better {
                        Better::Higher if pv.median > 0.0 => Some(s.median / pv.median),
                        Better::Lower if s.median > 0.0 => Some(pv.median / s.median),
                        _ => None,
                    };
                }
            }
            Figure {
                id: r.id,
                group,
                label: r.label,
                unit: r.unit,
                better: r.better,
                switchyard,
                switchyard_note,
                peer,
                peer_label,
                peer_value,
                peer_note,
                ratio,
            }
        })
        .collect()
}

/// A number for a table: thousands separated for rates, fixed decimals for
/// the rest.
pub fn fmt_num(v: f64, unit: Unit) -> String {
    match unit {
        Unit::PerSec if v >= 100.0 => group_thousands(v.round() as u64),
        Unit::PerSec => format!("{v:.1}"),
        Unit::Ms if v < 10.0 => format!("{v:.2}"),
        Unit::Ms => format!("{v:.1}"),
        Unit::Us => format!("{v:.1}"),
        Unit::Secs => format!("{v:.2}"),
        Unit::MiB => format!("{v:.0}"),
        Unit::Count => group_thousands(v.round().max(0.0) as u64),
        Unit::Ratio => format!("{v:.2}"),
    }
}

fn group_thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn fmt_stat(s: &Stat, unit: Unit) -> String {
    if s.runs.len() > 1 {
        format!(
            "{} ({}–{})",
            fmt_num(s.median, unit),
            fmt_num(s.min, unit),
            fmt_num(s.max, unit)
        )
    } else {
        fmt_num(s.median, unit)
    }
}

/// The markdown table of every figure.
pub fn markdown(figures: &[Figure]) -> String {
    let mut t = String::new();
    t.push_str("| Scenario | Unit | Switchyard | Peer | Peer figure | Switchyard ÷ peer |\n");
    t.push_str("|---|---|---:|---|---:|---:|\n");
    for f in figures {
        let sy = match (&f.switchyard, &f.switchyard_note) {
            (Some(s), _) => fmt_stat(s, f.unit),
            (None, Some(n)) => n.clone(),
            _ => String::new(),
        };
        let peer = match (&f.peer, &f.peer_label) {
            (Some(p), Some(l)) => format!("{p}: {l}"),
            _ => "—".into(),
        };
        let pv = match (&f.peer_value, &f.peer_note) {
            (Some(s), _) => fmt_stat(s, f.unit),
            (None, Some(n)) => n.clone(),
            _ => "—".into(),
        };
        let ratio = match f.ratio {
            Some(r) if f.better == Better::Lower => format!("**{r:.2}×** (peer ÷ Switchyard)"),
            Some(r) => format!("**{r:.2}×**"),
            None => "—".into(),
        };
        let _ = writeln!(
            t,
            "| {} `{}` | {} | {} | {} | {} | {} |",
            f.label,
            f.id,
            f.unit.name(),
            sy,
            peer,
            pv,
            ratio
        );
    }
    t
}

/// A target of the issue and whether this run meets it.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    pub target: String,
    pub measured: String,
    /// `None` when there is nothing to judge (not measured).
    pub met: Option<bool>,
}

pub fn targets_markdown(t: &[TargetCheck]) -> String {
    let mut s = String::from("| Target | Measured | Met |\n|---|---:|---|\n");
    for c in t {
        let met = match c.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        let _ = writeln!(s, "| {} | {} | {} |", c.target, c.measured, met);
    }
    s
}

/// The machine and the versions of everything measured.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
    pub os: String,
    pub load_average_at_start: String,
    pub versions: BTreeMap<String, String>,
    pub switchyard_commit: String,
    pub note: String,
}

fn cmd_out(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(o) if o.status.success() => {
            let s = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if s.is_empty() {
                String::from_utf8_lossy(&o.stderr).trim().to_string()
            } else {
                s
            }
        }
        Ok(o) => format!(
            "unavailable ({})",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("unavailable ({e})"),
    }
}

fn first_line(s: String) -> String {
    s.lines().next().unwrap_or("").to_string()
}

pub fn describe_machine(server_bin: &Path, node: &str, python: &Path) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("PRETTY_NAME="))
        .map(|l| {
            l.trim_start_matches("PRETTY_NAME=")
                .trim_matches('"')
                .to_string()
        })
        .unwrap_or_default();
    let mut versions = BTreeMap::new();
    versions.insert("rustc".into(), cmd_out("rustc", &["--version"]));
    versions.insert(
        "switchyard".into(),
        cmd_out(&server_bin.display().to_string(), &["--version"]),
    );
    versions.insert("node".into(), cmd_out(node, &["--version"]));
    versions.insert(
        "redis-server".into(),
        cmd_out("redis-server", &["--version"]),
    );
    versions.insert(
        "bullmq".into(),
        std::fs::read_to_string("bench/bullmq/node_modules/bullmq/package.json")
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["version"].as_str().map(str::to_string))
            .unwrap_or_else(|| "not installed".into()),
    );
    let py = python.display().to_string();
    versions.insert("python".into(), cmd_out(&py, &["--version"]));
    versions.insert(
        "python temporalio".into(),
        cmd_out(
            &py,
            &[
                "-c",
                "import importlib.metadata as m; print(m.version('temporalio'))",
            ],
        ),
    );
    let temporal = python
        .parent()
        .map(|d| d.join("temporal"))
        .filter(|p| p.exists());
    versions.insert(
        "temporal CLI".into(),
        match temporal {
            Some(p) => first_line(cmd_out(&p.display().to_string(), &["--version"])),
            None => "not installed".into(),
        },
    );
    let commit = cmd_out("git", &["rev-parse", "--short=12", "HEAD"]);
    let dirty = !cmd_out("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
    Machine {
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cpu_model,
        memory_gib: (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        os,
        load_average_at_start: std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_string(),
        versions,
        switchyard_commit: if dirty {
            format!("{commit} (with uncommitted changes)")
        } else {
            commit
        },
        note: String::new(),
    }
}

/// `YYYY-MM-DD` and `YYYY-MM-DDTHH:MM:SSZ` of now, in UTC.
pub fn utc_now() -> (String, String) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    let date = format!("{y:04}-{m:02}-{d:02}");
    let ts = format!(
        "{date}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    (date, ts)
}
