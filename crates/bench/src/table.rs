//! Text tables: columns with a header, an alignment and a least width, widened to their
//! longest cell; rendered plain (an indent, a gap between columns, optionally a rule under
//! the header), with pipes (`| a | b |`, padded), or as Markdown (unpadded).

#[derive(Clone, Copy, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}

struct Column {
    header: String,
    align: Align,
    width: usize,
}

/// A table built column by column, then row by row.
pub struct Table {
    indent: &'static str,
    gap: &'static str,
    rule: bool,
    columns: Vec<Column>,
    rows: Vec<Vec<String>>,
}

impl Default for Table {
    fn default() -> Self {
        Self::new()
    }
}

impl Table {
    /// No indent, one space between columns, no rule.
    pub fn new() -> Self {
        Self { indent: "", gap: " ", rule: false, columns: Vec::new(), rows: Vec::new() }
    }

    /// Text before every line.
    pub fn indent(mut self, indent: &'static str) -> Self {
        self.indent = indent;
        self
    }

    /// Text between two columns.
    pub fn gap(mut self, gap: &'static str) -> Self {
        self.gap = gap;
        self
    }

    /// A line of dashes under the header, as wide as the table.
    pub fn rule(mut self) -> Self {
        self.rule = true;
        self
    }

    /// A left-aligned column at least `width` wide.
    pub fn left(mut self, header: &str, width: usize) -> Self {
        self.columns.push(Column { header: header.to_owned(), align: Align::Left, width });
        self
    }

    /// A right-aligned column at least `width` wide.
    pub fn right(mut self, header: &str, width: usize) -> Self {
        self.columns.push(Column { header: header.to_owned(), align: Align::Right, width });
        self
    }

    /// A row: one cell per column.
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        let cells: Vec<String> = cells.into_iter().map(Into::into).collect();
        assert_eq!(
            cells.len(),
            self.columns.len(),
            "a row of {} cells in a table of {} columns",
            cells.len(),
            self.columns.len()
        );
        self.rows.push(cells);
    }

    fn widths(&self) -> Vec<usize> {
        let len = |s: &str| s.chars().count();
        self.columns
            .iter()
            .enumerate()
            .map(|(i, c)| self.rows.iter().map(|r| len(&r[i])).fold(c.width.max(len(&c.header)), usize::max))
            .collect()
    }

    /// `cells` padded to `widths`, joined by `gap`; a left-aligned last cell is padded only
    /// if `pad_last`.
    fn line(&self, widths: &[usize], cells: &[&str], gap: &str, pad_last: bool) -> String {
        let last = if pad_last { usize::MAX } else { cells.len().saturating_sub(1) };
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .zip(&self.columns)
            .enumerate()
            .map(|(i, ((cell, width), column))| match column.align {
                Align::Left if i == last => (*cell).to_owned(),
                Align::Left => format!("{cell:<width$}"),
                Align::Right => format!("{cell:>width$}"),
            })
            .collect();
        padded.join(gap)
    }

    fn headers(&self) -> Vec<&str> {
        self.columns.iter().map(|c| c.header.as_str()).collect()
    }

    /// The plain table: the header, the rule if asked for, the rows; every line ends in `\n`.
    pub fn text(&self) -> String {
        let widths = self.widths();
        let mut out = format!("{}{}\n", self.indent, self.line(&widths, &self.headers(), self.gap, false));
        if self.rule {
            let width = widths.iter().sum::<usize>() + self.gap.chars().count() * widths.len().saturating_sub(1);
            out.push_str(&format!("{}{}\n", self.indent, "-".repeat(width)));
        }
        for row in &self.rows {
            let cells: Vec<&str> = row.iter().map(String::as_str).collect();
            out.push_str(&format!("{}{}\n", self.indent, self.line(&widths, &cells, self.gap, false)));
        }
        out
    }

    /// Prints [`text`](Self::text).
    pub fn print(&self) {
        print!("{}", self.text());
    }

    /// `| a | b |` with every cell padded, and a line of dashes under the header.
    pub fn pipes(&self) -> String {
        let widths = self.widths();
        let line = |cells: &[&str]| format!("| {} |\n", self.line(&widths, cells, " | ", true));
        let mut out = line(&self.headers());
        out.push('|');
        for w in &widths {
            out.push_str(&"-".repeat(w + 2));
            out.push('|');
        }
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(&row.iter().map(String::as_str).collect::<Vec<_>>()));
        }
        out
    }

    /// Markdown: `| a | b |` unpadded, `| --- | ---: |` under the header.
    pub fn markdown(&self) -> String {
        let line = |cells: &[&str]| format!("| {} |\n", cells.join(" | "));
        let mut out = line(&self.headers());
        let aligns: Vec<&str> =
            self.columns.iter().map(|c| if c.align == Align::Right { "---:" } else { "---" }).collect();
        out.push_str(&line(&aligns));
        for row in &self.rows {
            out.push_str(&line(&row.iter().map(String::as_str).collect::<Vec<_>>()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Table {
        let mut t = Table::new().left("name", 6).right("n", 3);
        t.row(["a", "1"]);
        t.row(["longer name", "22"]);
        t
    }

    #[test]
    fn plain_columns_widen_to_their_longest_cell() {
        assert_eq!(sample().text(), "name          n\na             1\nlonger name  22\n");
    }

    #[test]
    fn a_last_left_column_is_not_padded_and_the_rule_spans_the_table() {
        let mut t = Table::new().indent("  ").gap("  ").rule().right("#", 2).left("result", 0);
        t.row(["1", "pass"]);
        t.row(["2", ""]);
        assert_eq!(t.text(), "   #  result\n  ----------\n   1  pass\n   2  \n");
    }

    #[test]
    fn pipes_pad_every_cell() {
        assert_eq!(
            sample().pipes(),
            "| name        |   n |\n|-------------|-----|\n| a           |   1 |\n| longer name |  22 |\n"
        );
    }

    #[test]
    fn markdown_is_unpadded_with_alignments() {
        assert_eq!(sample().markdown(), "| name | n |\n| --- | ---: |\n| a | 1 |\n| longer name | 22 |\n");
    }
}
