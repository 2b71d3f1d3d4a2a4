//! Rendering command results: an aligned table for people, or one JSON or
//! YAML document for scripts.

use std::fmt::Write as _;

use clap::ValueEnum;
use serde::Serialize;

use super::CliError;

/// Output format, `-o`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Table,
    /// One JSON document.
    Json,
    /// One YAML document.
    Yaml,
}

/// A command result: serde for JSON and YAML, plus its table form.
pub trait Render: Serialize {
    /// Appends the human-readable form to `out`.
    fn table(&self, out: &mut String);
}

/// `value` in `format`, ending with a newline.
pub fn render<T: Render>(value: &T, format: Format) -> Result<String, CliError> {
    let mut text = match format {
        Format::Table => {
            let mut out = String::new();
            value.table(&mut out);
            out
        }
        Format::Json => serde_json::to_string_pretty(value).map_err(|e| CliError::Output(e.to_string()))?,
        Format::Yaml => serde_yaml_ng::to_string(value).map_err(|e| CliError::Output(e.to_string()))?,
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// Columns aligned on the widest cell, separated by three spaces.
#[derive(Debug, Clone)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with this header row.
    pub fn new(header: &[&str]) -> Table {
        Table { rows: vec![header.iter().map(|h| h.to_string()).collect()] }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Appends the table to `out`, trailing spaces trimmed.
    pub fn write(&self, out: &mut String) {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| self.rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
            .collect();
        for row in &self.rows {
            let mut line = String::new();
            for (cell, width) in row.iter().zip(&widths) {
                let _ = write!(line, "{cell:<width$}   ");
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
}

/// `yes` or `no`.
pub fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_string()
}

/// `-` for an empty cell, so columns stay readable.
pub fn or_dash(value: &str) -> String {
    if value.is_empty() {
        "-".into()
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_and_trims_line_ends() {
        let mut table = Table::new(&["ID", "NAME"]);
        table.row(vec!["1".into(), "first".into()]);
        table.row(vec!["100".into(), "".into()]);
        let mut out = String::new();
        table.write(&mut out);
        assert_eq!(out, "ID    NAME\n1     first\n100\n");
    }
}
