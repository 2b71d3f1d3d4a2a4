//! Maintenance windows: when a rollout may start work on a wave.
//!
//! A window such as `Mon-Fri 02:00+3h Europe/Berlin` opens on each listed day
//! at the given local wall-clock time and closes `length` of wall-clock time
//! later (02:00 to 05:00 local, whatever the UTC offset does in between).
//! Times that do not exist or exist twice on DST change days are resolved the
//! way most schedulers do ("compatible"): a start in the spring-forward gap
//! moves forward by the gap, a start in the autumn fold takes the first
//! occurrence.
//!
//! Time zones come from the tz database compiled into the binary, never from
//! the host: every replica of the control plane must take the same decision
//! for the same instant, whatever zoneinfo files its machine has.

use std::fmt;
use std::str::FromStr;

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::{TimeZone, TimeZoneDatabase};
use jiff::{SignedDuration, Span, Timestamp};
use serde::{Deserialize, Serialize};

use super::model::ValueError;
use super::strategy::{format_duration, parse_duration, Millis, MINUTE};

/// Longest window accepted: a window longer than a week would always be open.
const MAX_LENGTH: Millis = 7 * 24 * 60 * MINUTE;
/// How far ahead [`MaintenanceWindow::next_open`] looks: every window with at
/// least one day opens within a week, plus a day of slack for DST shifts.
const LOOKAHEAD_DAYS: i64 = 8;
/// Day names in the order of the `days` bitmask (bit 0 = Monday).
const DAY_NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const ALL_DAYS: u8 = 0b111_1111;
const SHAPE_RULE: &str = "must be `<days> <HH:MM>+<length> [IANA time zone]`, e.g. `Mon-Fri 02:00+3h Europe/Berlin`";

/// A recurring maintenance window such as `Mon-Fri 02:00+3h Europe/Berlin`.
///
/// Serialized as its canonical string, so stored strategies stay readable and
/// every stored window went through [`MaintenanceWindow::parse`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MaintenanceWindow {
    /// Days the window opens on; bit 0 = Monday ... bit 6 = Sunday.
    days: u8,
    /// Local opening time, minutes after midnight.
    start_minute: u16,
    /// Wall-clock length, whole minutes, 1 minute to 7 days.
    length: Millis,
    /// Canonical IANA name of `tz`.
    zone: String,
    tz: TimeZone,
}

impl PartialEq for MaintenanceWindow {
    fn eq(&self, other: &Self) -> bool {
        // `tz` is fully determined by `zone`.
        (self.days, self.start_minute, self.length, &self.zone)
            == (other.days, other.start_minute, other.length, &other.zone)
    }
}

impl Eq for MaintenanceWindow {}

fn window_error(rule: impl Into<String>, input: &str) -> ValueError {
    ValueError::new("window", rule, input)
}

impl MaintenanceWindow {
    /// Parses `<days> <HH:MM>+<length> [time zone]`, e.g. `Mon-Fri 02:00+3h Europe/Berlin`.
    pub fn parse(input: &str) -> Result<Self, ValueError> {
        let mut tokens: Vec<String> = input.split_whitespace().map(str::to_string).collect();
        // Accept `02:00 +3h` as well as `02:00+3h`.
        if tokens.len() >= 3 && tokens[2].starts_with('+') && !tokens[1].contains('+') {
            let length = tokens.remove(2);
            tokens[1].push_str(&length);
        }
        let (days, when, zone) = match tokens.as_slice() {
            [days, when] => (days.as_str(), when.as_str(), "UTC"),
            [days, when, zone] => (days.as_str(), when.as_str(), zone.as_str()),
            _ => return Err(window_error(SHAPE_RULE, input)),
        };
        let days = parse_days(days, input)?;
        let (start, length) =
            when.split_once('+').ok_or_else(|| window_error(format!("`{when}`: {SHAPE_RULE}"), input))?;
        let start_minute = parse_start(start, input)?;
        let length = parse_duration("window", length)
            .ok()
            .filter(|ms| *ms >= MINUTE && *ms <= MAX_LENGTH && ms % MINUTE == 0)
            .ok_or_else(|| {
                window_error(
                    format!("length `+{length}` must be whole minutes from 1m to 7d, e.g. `+3h`, `+90m`, `+1h30m`"),
                    input,
                )
            })?;
        let tz = TimeZoneDatabase::bundled().get(zone).map_err(|_| {
            window_error(
                format!(
                    "time zone `{zone}` is not an IANA time zone name such as `Europe/Berlin` (leave it out for UTC)"
                ),
                input,
            )
        })?;
        let zone = tz.iana_name().unwrap_or(zone).to_string();
        Ok(Self { days, start_minute, length, zone, tz })
    }

    /// The IANA name of the window's time zone.
    pub fn time_zone(&self) -> &str {
        &self.zone
    }

    /// The window's wall-clock length.
    pub fn length(&self) -> Millis {
        self.length
    }

    /// True when the window is open at `now`. A window crossing midnight
    /// stays open into the next day: `Fri 23:00+3h` is open Saturday 01:00.
    pub fn is_open(&self, now: Millis) -> bool {
        let Some((ts, today)) = self.local_date(now) else { return false };
        let now = ts.as_millisecond();
        // An opening up to 7 days long (plus a DST hour) may have started a week ago.
        (-LOOKAHEAD_DAYS..=0).filter_map(|k| self.opening(today, k)).any(|(start, end)| start <= now && now < end)
    }

    /// The earliest instant at or after `now` at which the window is open:
    /// `now` itself when it is open, otherwise the start of the next opening
    /// (None only if that lies beyond the supported calendar range).
    pub fn next_open(&self, now: Millis) -> Option<Millis> {
        if self.is_open(now) {
            return Some(now);
        }
        let (ts, today) = self.local_date(now)?;
        let now_ms = ts.as_millisecond();
        (-1..=LOOKAHEAD_DAYS)
            .filter_map(|k| self.opening(today, k))
            .map(|(start, _)| start)
            .filter(|start| *start >= now_ms)
            .min()
            .and_then(|start| Millis::try_from(start).ok())
    }

    fn local_date(&self, now: Millis) -> Option<(Timestamp, Date)> {
        let ts = Timestamp::from_millisecond(i64::try_from(now).ok()?).ok()?;
        Some((ts, self.tz.to_datetime(ts).date()))
    }

    /// The opening that starts on the local day `offset` days from `today`,
    /// as `[start, end)` in Unix milliseconds, if the window opens that day.
    fn opening(&self, today: Date, offset: i64) -> Option<(i64, i64)> {
        let day = today.checked_add(Span::new().days(offset)).ok()?;
        let bit = day.weekday().to_monday_zero_offset();
        if self.days & (1 << bit) == 0 {
            return None;
        }
        let start = Time::new((self.start_minute / 60) as i8, (self.start_minute % 60) as i8, 0, 0).ok()?;
        let start: DateTime = day.to_datetime(start);
        let end = start.checked_add(SignedDuration::from_millis(i64::try_from(self.length).ok()?)).ok()?;
        let start = self.tz.to_ambiguous_timestamp(start).compatible().ok()?.as_millisecond();
        let end = self.tz.to_ambiguous_timestamp(end).compatible().ok()?.as_millisecond();
        (start < end).then_some((start, end))
    }
}

/// True when `now` is inside one of `windows`; no windows means always open.
pub fn any_open(windows: &[MaintenanceWindow], now: Millis) -> bool {
    windows.is_empty() || windows.iter().any(|w| w.is_open(now))
}

/// The earliest instant at or after `now` at which one of `windows` is open
/// (`now` when there are none).
pub fn next_opening(windows: &[MaintenanceWindow], now: Millis) -> Option<Millis> {
    if windows.is_empty() {
        return Some(now);
    }
    windows.iter().filter_map(|w| w.next_open(now)).min()
}

fn parse_day(name: &str) -> Option<u8> {
    let lower = name.trim().to_ascii_lowercase();
    const FULL: [&str; 7] = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"];
    (0..7u8).find(|&i| lower == DAY_NAMES[i as usize].to_ascii_lowercase() || lower == FULL[i as usize])
}

fn parse_days(spec: &str, input: &str) -> Result<u8, ValueError> {
    if spec == "*" || spec.eq_ignore_ascii_case("daily") {
        return Ok(ALL_DAYS);
    }
    let bad = |part: &str| {
        window_error(
            format!("days `{part}` must be `daily`, `*`, day names or ranges such as `Mon-Fri`, `Sat,Sun`, `Fri-Mon`"),
            input,
        )
    };
    let mut days = 0u8;
    for part in spec.split(',') {
        match part.split_once('-') {
            Some((from, to)) => {
                let (from, to) = (parse_day(from).ok_or_else(|| bad(part))?, parse_day(to).ok_or_else(|| bad(part))?);
                // Ranges may wrap over the week end: `Fri-Mon` is Fri, Sat, Sun, Mon.
                let mut d = from;
                loop {
                    days |= 1 << d;
                    if d == to {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => days |= 1 << parse_day(part).ok_or_else(|| bad(part))?,
        }
    }
    Ok(days)
}

fn parse_start(start: &str, input: &str) -> Result<u16, ValueError> {
    let bad = || window_error(format!("start `{start}` must be a 24-hour time HH:MM such as `02:00`"), input);
    let (h, m) = start.split_once(':').ok_or_else(bad)?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// Renders the day set compactly, keeping ranges that wrap over the week end
/// (`Fri-Mon`) the way an operator would write them.
fn format_days(days: u8) -> String {
    if days & ALL_DAYS == ALL_DAYS {
        return "daily".to_string();
    }
    let on = |d: usize| days & (1 << (d % 7)) != 0;
    let mut parts = Vec::new();
    // Runs start at a set day whose predecessor is unset; there is at least one
    // unset day, so every run has a start.
    for first in (0..7).filter(|&d| on(d) && !on(d + 6)) {
        let mut last = first;
        while on(last + 1) {
            last += 1;
        }
        let name = |d: usize| DAY_NAMES[d % 7];
        parts.push(match last - first {
            0 => name(first).to_string(),
            1 => format!("{},{}", name(first), name(last)),
            _ => format!("{}-{}", name(first), name(last)),
        });
    }
    parts.join(",")
}

impl fmt::Display for MaintenanceWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:02}:{:02}+{} {}",
            format_days(self.days),
            self.start_minute / 60,
            self.start_minute % 60,
            format_duration(self.length),
            self.zone
        )
    }
}

impl FromStr for MaintenanceWindow {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for MaintenanceWindow {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<MaintenanceWindow> for String {
    fn from(w: MaintenanceWindow) -> String {
        w.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::strategy::HOUR;

    /// Unix milliseconds of a UTC civil time, e.g. `utc("2025-03-30T01:00")`.
    fn utc(s: &str) -> Millis {
        let dt: DateTime = s.parse().unwrap();
        TimeZone::UTC.to_ambiguous_timestamp(dt).compatible().unwrap().as_millisecond() as Millis
    }

    fn window(s: &str) -> MaintenanceWindow {
        MaintenanceWindow::parse(s).unwrap()
    }

    #[test]
    fn parses_day_lists_ranges_and_default_utc() {
        let w = window("Mon-Fri 02:00+3h Europe/Berlin");
        assert_eq!(w.time_zone(), "Europe/Berlin");
        assert_eq!(w.length(), 3 * HOUR);
        assert_eq!(window("Sat,Sun 22:30+90m").time_zone(), "UTC");
        assert_eq!(window("mon,wed-fri 01:00+1h30m UTC").to_string(), "Mon,Wed-Fri 01:00+1h30m UTC");
        assert_eq!(window("daily 00:00+1h").to_string(), "daily 00:00+1h UTC");
        assert_eq!(window("* 12:00 +30m").to_string(), "daily 12:00+30m UTC");
        assert_eq!(window("Mon-Sun 12:00+30m").to_string(), "daily 12:00+30m UTC");
        assert_eq!(window("Friday-Monday 23:00+2h europe/berlin").to_string(), "Fri-Mon 23:00+2h Europe/Berlin");
    }

    #[test]
    fn display_is_canonical_and_parses_back() {
        for s in [
            "Mon-Fri 02:00+3h Europe/Berlin",
            "Sat,Sun 22:30+1h30m UTC",
            "Mon,Wed-Fri 01:05+45m America/New_York",
            "Wed,Fri-Mon 23:00+7d Asia/Tokyo",
            "Tue 00:00+1m UTC",
            "daily 04:00+2h Europe/Berlin",
        ] {
            let w = window(s);
            assert_eq!(w.to_string(), s);
            assert_eq!(window(&w.to_string()), w);
        }
    }

    #[test]
    fn serde_stores_the_window_as_its_canonical_string() {
        let w = window("fri-mon 23:00+180m Europe/Berlin");
        let json = serde_json::to_string(&w).unwrap();
        assert_eq!(json, "\"Fri-Mon 23:00+3h Europe/Berlin\"");
        assert_eq!(serde_json::from_str::<MaintenanceWindow>(&json).unwrap(), w);
        let err = serde_json::from_str::<MaintenanceWindow>("\"Mon 25:00+1h\"").unwrap_err();
        assert!(err.to_string().contains("window"), "{err}");
    }

    #[test]
    fn invalid_windows_name_the_field_and_the_rule() {
        for (bad, rule) in [
            ("", "<days>"),
            ("Mon-Fri", "<days>"),
            ("Mon-Fri 02:00+3h Europe/Berlin extra", "<days>"),
            ("Mon-Fro 02:00+3h", "days `Mon-Fro`"),
            ("Mon,,Tue 02:00+3h", "days ``"),
            ("Mon 02:00", "`02:00`"),
            ("Mon 24:00+1h", "start `24:00`"),
            ("Mon 02:60+1h", "start `02:60`"),
            ("Mon 2:0+1h", "start `2:0`"),
            ("Mon 02:00+0m", "length"),
            ("Mon 02:00+8d", "length"),
            ("Mon 02:00+90s", "length"),
            ("Mon 02:00+3x", "length"),
            ("Mon 02:00+3h Mars/Olympus", "time zone `Mars/Olympus`"),
        ] {
            let e = MaintenanceWindow::parse(bad).unwrap_err();
            assert_eq!(e.field, "window", "{bad}");
            assert!(e.rule.contains(rule), "{bad}: {}", e.rule);
        }
    }

    #[test]
    fn weekday_window_opens_in_local_time() {
        let w = window("Mon-Fri 02:00+3h Europe/Berlin");
        // Wednesday 2025-01-15, CET = UTC+1: open 01:00Z to 04:00Z.
        assert!(!w.is_open(utc("2025-01-15T00:59")));
        assert!(w.is_open(utc("2025-01-15T01:00")));
        assert!(w.is_open(utc("2025-01-15T03:59")));
        assert!(!w.is_open(utc("2025-01-15T04:00")));
        // Saturday and Sunday stay closed; next opening is Monday 02:00 CET.
        assert!(!w.is_open(utc("2025-01-18T01:30")));
        assert_eq!(w.next_open(utc("2025-01-18T01:30")), Some(utc("2025-01-20T01:00")));
        assert_eq!(w.next_open(utc("2025-01-15T02:00")), Some(utc("2025-01-15T02:00")), "open now");
    }

    #[test]
    fn window_crossing_midnight_counts_for_the_next_day() {
        let w = window("Fri 23:00+3h");
        // 2025-01-17 is a Friday.
        assert!(w.is_open(utc("2025-01-17T23:30")));
        assert!(w.is_open(utc("2025-01-18T01:00")), "Saturday 01:00 is inside Friday's window");
        assert!(!w.is_open(utc("2025-01-18T02:00")));
        assert!(!w.is_open(utc("2025-01-18T23:30")), "Saturday itself has no window");
    }

    #[test]
    fn window_crossing_the_week_end_wraps_to_monday() {
        let w = window("Sun 22:00+4h");
        // 2025-01-19 is a Sunday; the window runs into Monday 02:00.
        assert!(w.is_open(utc("2025-01-20T01:59")));
        assert!(!w.is_open(utc("2025-01-20T02:00")));
        assert_eq!(w.next_open(utc("2025-01-20T02:00")), Some(utc("2025-01-26T22:00")));
        let wrap = window("Fri-Mon 12:00+1h");
        for (day, open) in [("13", true), ("14", false), ("16", false), ("17", true), ("18", true), ("19", true)] {
            assert_eq!(wrap.is_open(utc(&format!("2025-01-{day}T12:30"))), open, "2025-01-{day}");
        }
    }

    #[test]
    fn window_longer_than_a_day_stays_open_across_days() {
        let w = window("Sat 00:00+2d");
        assert!(w.is_open(utc("2025-01-19T23:59")));
        assert!(!w.is_open(utc("2025-01-20T00:00")));
    }

    #[test]
    fn spring_forward_day_in_berlin_opens_after_the_gap() {
        // 2025-03-30: clocks jump from 02:00 CET to 03:00 CEST. 02:00 does not
        // exist, so the window opens at 03:00 CEST (01:00Z) and still closes
        // at 05:00 local wall-clock time (03:00Z).
        let w = window("daily 02:00+3h Europe/Berlin");
        assert!(!w.is_open(utc("2025-03-30T00:59")));
        assert_eq!(w.next_open(utc("2025-03-30T00:00")), Some(utc("2025-03-30T01:00")));
        assert!(w.is_open(utc("2025-03-30T01:00")));
        assert!(w.is_open(utc("2025-03-30T02:59")));
        assert!(!w.is_open(utc("2025-03-30T03:00")));
        // The next day runs on summer time: 02:00 CEST = 00:00Z.
        assert_eq!(w.next_open(utc("2025-03-30T03:00")), Some(utc("2025-03-31T00:00")));
    }

    #[test]
    fn fall_back_day_in_berlin_uses_the_first_0200_and_closes_at_local_0500() {
        // 2025-10-26: clocks fall from 03:00 CEST back to 02:00 CET. The window
        // opens at the first 02:00 (CEST, 00:00Z) and closes at 05:00 CET (04:00Z).
        let w = window("Sun 02:00+3h Europe/Berlin");
        assert_eq!(w.next_open(utc("2025-10-25T12:00")), Some(utc("2025-10-26T00:00")));
        assert!(w.is_open(utc("2025-10-26T00:00")));
        assert!(w.is_open(utc("2025-10-26T03:59")));
        assert!(!w.is_open(utc("2025-10-26T04:00")));
        // A week later it is plain CET: 01:00Z to 04:00Z.
        assert_eq!(w.next_open(utc("2025-10-26T04:00")), Some(utc("2025-11-02T01:00")));
    }

    #[test]
    fn no_windows_means_always_open_and_several_windows_combine() {
        let now = utc("2025-01-15T12:00");
        assert!(any_open(&[], now));
        assert_eq!(next_opening(&[], now), Some(now));
        let ws = [window("Sat 10:00+1h"), window("Thu 09:00+1h")];
        assert!(!any_open(&ws, now));
        assert_eq!(next_opening(&ws, now), Some(utc("2025-01-16T09:00")));
    }

    #[test]
    fn out_of_range_instants_are_closed_not_panics() {
        let w = window("daily 00:00+1d");
        assert!(!w.is_open(Millis::MAX));
        assert_eq!(w.next_open(Millis::MAX), None);
    }
}
