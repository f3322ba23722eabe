//! The last line every benchmark prints: `RESULT scenario=NAME key=value …`, for scripts that
//! collect figures across runs (BENCHMARKS.md's tables are made from these lines).

use std::fmt::Write;

/// Builds one `RESULT` line; keys keep the order they were added in.
pub struct ResultLine {
    line: String,
}

impl ResultLine {
    pub fn new(scenario: &str) -> Self {
        ResultLine { line: format!("RESULT scenario={scenario}") }
    }

    /// Adds `key=value`; a float is written with up to three decimals.
    pub fn figure(mut self, key: &str, value: impl Figure) -> Self {
        write!(self.line, " {key}={}", value.render()).expect("writing to a String");
        self
    }

    pub fn print(self) {
        println!("{}", self.line);
    }
}

/// A value on a `RESULT` line: a bare number, never a unit.
pub trait Figure {
    fn render(&self) -> String;
}

impl Figure for f64 {
    fn render(&self) -> String {
        let text = format!("{self:.3}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

impl Figure for u64 {
    fn render(&self) -> String {
        self.to_string()
    }
}

impl Figure for usize {
    fn render(&self) -> String {
        self.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_line_lists_its_figures_in_order_without_units() {
        let line = ResultLine::new("watch").figure("p99_ms", 4.5_f64).figure("missing", 0_usize).figure("ratio", 0.125);
        assert_eq!(line.line, "RESULT scenario=watch p99_ms=4.5 missing=0 ratio=0.125");
    }
}
