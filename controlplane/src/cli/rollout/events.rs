//! How `rollout watch` shows events: timestamped lines when stdout is not a
//! terminal, JSON lines with `-o json`, YAML documents with `-o yaml`, and
//! one progress bar per wave on a terminal.

use std::io::Write;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kairos_fleet_proto::fleet::v1 as pb;
use serde::{Deserialize, Serialize};

use super::names::{event_kind_name, time_text};
use super::status::{RolloutNodeView, RolloutView, WaveView};
use super::watch::Outcome;
use crate::cli::output::Format;
use crate::cli::CliError;

/// One event of the Watch stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventView {
    /// `existing`, `synced`, `created`, `phase-changed`, `wave-started`,
    /// `wave-progress`, `wave-finished` or `node-changed`.
    pub kind: String,
    /// Store revision of the change.
    pub revision: u64,
    /// When the change was applied, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// What the engine decided, in words.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<String>,
    /// The rollout after the change; absent for `synced`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutView>,
    /// The node that changed, for `node-changed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<RolloutNodeView>,
}

impl From<pb::RolloutEvent> for EventView {
    fn from(e: pb::RolloutEvent) -> EventView {
        EventView {
            kind: event_kind_name(e.kind),
            revision: e.revision,
            time: time_text(e.time.as_ref()),
            messages: e.messages,
            rollout: e.rollout.map(RolloutView::from),
            node: e.node.map(RolloutNodeView::from),
        }
    }
}

/// Now, RFC 3339, for lines about events that carry no time.
fn now() -> String {
    jiff::Timestamp::now().to_string()
}

/// `wave 1 (2/4): 3/10 healthy, 1 failed, 2 in flight`.
fn wave_progress(r: &RolloutView) -> String {
    let mut text = format!("wave {} ({})", r.current_wave, r.wave_position());
    if let Some(c) = r.current_counts() {
        text.push_str(&format!(": {}/{} healthy, {} failed, {} in flight", c.healthy, c.total, c.failed, c.in_flight));
    }
    text
}

/// `node abc wave 1: failed (health-timeout), attempt 2: no report in 30m`.
fn node_text(n: &RolloutNodeView) -> String {
    let mut text = format!("node {} wave {}: {}", n.node_id, n.wave, n.state);
    if let Some(reason) = &n.failure_reason {
        text.push_str(&format!(" ({reason})"));
    }
    if n.attempt > 1 {
        text.push_str(&format!(", attempt {}", n.attempt));
    }
    if !n.message.is_empty() {
        text.push_str(&format!(": {}", n.message));
    }
    text
}

impl EventView {
    /// The event's plain-text lines: one with time, kind, phase, wave and
    /// counts (or the node's change), then each message indented. Nothing
    /// for `synced`, which only marks the end of the initial state.
    pub fn lines(&self) -> String {
        let time = self.time.clone().unwrap_or_else(now);
        let mut text = String::new();
        if let Some(n) = &self.node {
            text.push_str(&format!("{time} {} {}\n", self.kind, node_text(n)));
        } else if let Some(r) = &self.rollout {
            let t = &r.totals;
            text.push_str(&format!(
                "{time} {} {} {}; total {}/{} healthy, {} failed\n",
                self.kind,
                r.phase_detail(),
                wave_progress(r),
                t.healthy,
                t.total,
                t.failed
            ));
        }
        for message in &self.messages {
            text.push_str(&format!("    {message}\n"));
        }
        text
    }
}

/// Where watch output goes.
pub trait Presenter {
    /// Shows one event; `false` when the reader went away (closed pipe).
    fn show(&mut self, event: &EventView) -> Result<bool, CliError>;
    /// A remark about the stream itself, e.g. a reconnect.
    fn note(&mut self, text: &str);
    /// Shows how the rollout ended.
    fn finish(&mut self, outcome: &Outcome, rollout: &RolloutView) -> Result<(), CliError>;
}

/// Writes and flushes; `false` when the reader went away.
fn emit(out: &mut dyn Write, text: &str) -> Result<bool, CliError> {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(CliError::Output(e.to_string())),
    }
}

/// Plain lines (table format), JSON lines or YAML documents on `out`;
/// notes go to stderr so scripted output stays clean. In plain lines a
/// `wave-progress` event that changes none of the counts shown (a node
/// moved between steps of its upgrade) is left out.
pub struct Lines<'a> {
    out: &'a mut dyn Write,
    format: Format,
    last_progress: Option<String>,
}

impl<'a> Lines<'a> {
    /// Lines in `format` on `out`.
    pub fn new(out: &'a mut dyn Write, format: Format) -> Lines<'a> {
        Lines { out, format, last_progress: None }
    }

    /// True for a plain `wave-progress` line that would repeat the last
    /// rollout line but for its time.
    fn repeats(&mut self, event: &EventView, text: &str) -> bool {
        if self.format != Format::Table || event.node.is_some() {
            return false;
        }
        if event.rollout.is_none() {
            return false;
        }
        // `<time> <kind> <phase, wave and counts>`: compare the last part.
        let first = text.lines().next().unwrap_or_default();
        let shown = first.splitn(3, ' ').nth(2).unwrap_or_default().to_string();
        let repeat = event.kind == "wave-progress"
            && event.messages.is_empty()
            && self.last_progress.as_deref() == Some(shown.as_str());
        self.last_progress = Some(shown);
        repeat
    }
}

/// One event as one JSON line or one YAML document.
pub fn serialized(event: &EventView, format: Format) -> Result<String, CliError> {
    match format {
        Format::Table => Ok(event.lines()),
        Format::Json => {
            let mut line = serde_json::to_string(event).map_err(|e| CliError::Output(e.to_string()))?;
            line.push('\n');
            Ok(line)
        }
        Format::Yaml => {
            let doc = serde_yaml_ng::to_string(event).map_err(|e| CliError::Output(e.to_string()))?;
            Ok(format!("---\n{doc}"))
        }
    }
}

impl Presenter for Lines<'_> {
    fn show(&mut self, event: &EventView) -> Result<bool, CliError> {
        let text = serialized(event, self.format)?;
        if text.is_empty() || self.repeats(event, &text) {
            return Ok(true);
        }
        emit(self.out, &text)
    }

    fn note(&mut self, text: &str) {
        eprintln!("{} {text}", now());
    }

    fn finish(&mut self, outcome: &Outcome, rollout: &RolloutView) -> Result<(), CliError> {
        // Scripts reading JSON or YAML have the last event and the exit code.
        if self.format == Format::Table {
            emit(self.out, &format!("{}\n", outcome.text(rollout)))?;
        }
        Ok(())
    }
}

/// One progress bar per wave on a terminal, under a line with the rollout's
/// phase; event messages scroll above the bars.
pub struct Bars<'a> {
    multi: MultiProgress,
    header: ProgressBar,
    waves: Vec<ProgressBar>,
    style: ProgressStyle,
    out: &'a mut dyn Write,
}

impl<'a> Bars<'a> {
    /// Bars drawn on stdout; the outcome is written to `out` at the end.
    pub fn new(out: &'a mut dyn Write) -> Bars<'a> {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let header = multi.add(ProgressBar::new(0));
        if let Ok(style) = ProgressStyle::with_template("{msg}") {
            header.set_style(style);
        }
        let style = ProgressStyle::with_template("{prefix:>8} [{bar:40}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        Bars { multi, header, waves: Vec::new(), style, out }
    }

    fn update(&mut self, rollout: &RolloutView) {
        self.header.set_message(format!(
            "rollout {} to {}: {}, wave {} ({}), {}",
            rollout.rollout_id,
            rollout.target(),
            rollout.phase_detail(),
            rollout.current_wave,
            rollout.wave_position(),
            rollout.totals.summary()
        ));
        for wave in &rollout.waves {
            let index = wave.index as usize;
            while self.waves.len() <= index {
                let bar = self.multi.add(ProgressBar::new(0).with_style(self.style.clone()));
                bar.set_prefix(format!("wave {}", self.waves.len()));
                self.waves.push(bar);
            }
            if let Some(bar) = self.waves.get(index) {
                bar.set_length(u64::from(wave.counts.total));
                bar.set_position(u64::from(wave.counts.finished()));
                bar.set_message(wave_message(wave));
            }
        }
    }
}

/// `running, 2 in flight, 1 failed`.
fn wave_message(wave: &WaveView) -> String {
    let c = &wave.counts;
    let mut text = wave.phase.clone();
    if c.in_flight > 0 {
        text.push_str(&format!(", {} in flight", c.in_flight));
    }
    if c.failed > 0 {
        text.push_str(&format!(", {} failed", c.failed));
    }
    if c.deferred > 0 {
        text.push_str(&format!(", {} deferred", c.deferred));
    }
    text
}

impl Presenter for Bars<'_> {
    fn show(&mut self, event: &EventView) -> Result<bool, CliError> {
        if let Some(r) = &event.rollout {
            self.update(r);
        }
        let time = event.time.clone().unwrap_or_else(now);
        if let Some(n) = &event.node {
            let _ = self.multi.println(format!("{time} {}", node_text(n)));
        }
        for message in &event.messages {
            let _ = self.multi.println(format!("{time} {message}"));
        }
        Ok(true)
    }

    fn note(&mut self, text: &str) {
        let _ = self.multi.println(format!("{} {text}", now()));
    }

    fn finish(&mut self, outcome: &Outcome, rollout: &RolloutView) -> Result<(), CliError> {
        self.update(rollout);
        for bar in &self.waves {
            bar.abandon();
        }
        self.header.abandon();
        emit(self.out, &format!("{}\n", outcome.text(rollout)))?;
        Ok(())
    }
}
