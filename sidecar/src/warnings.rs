//! The warnings of one request, for the `x-gatehouse-warning` header, bounded in memory and in
//! length whatever the client sent: 10,000 unknown parameters make one summarized line
//! ("10000 parameters are not supported by anthropic and were dropped: 'p0', 'p1', … (+9992)"),
//! not a header no SDK can read.

/// Most distinct warnings kept; further ones are only counted.
const MAX_GROUPS: usize = 16;
/// Most parameter names quoted per warning.
const MAX_NAMES: usize = 8;
/// Longest parameter name quoted (longer ones are cut).
const MAX_NAME: usize = 48;
/// Longest header value written, in bytes.
pub const MAX_HEADER: usize = 1024;

/// Warnings that share their text except for the parameter they name.
#[derive(Debug)]
struct Group {
    /// The text after the name (`is not supported by gemini and was dropped`), or the whole
    /// warning when it names no parameter.
    text: String,
    /// The first names seen.
    names: Vec<String>,
    /// How many warnings fell in this group.
    count: usize,
}

/// The warnings of one request.
#[derive(Debug, Default)]
pub struct Warnings {
    groups: Vec<Group>,
    /// Warnings that found no room.
    dropped: usize,
}

impl Warnings {
    /// Whether there is nothing to say.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty() && self.dropped == 0
    }

    /// Add one warning. A warning that starts with a quoted name (`'seed' is not supported…`) is
    /// grouped with those that say the same of other names.
    pub fn push(&mut self, warning: &str) {
        let (name, text) = match warning
            .strip_prefix('\'')
            .and_then(|rest| rest.split_once("' "))
        {
            Some((name, text)) => (Some(name), text),
            None => (None, warning),
        };
        let group = match self
            .groups
            .iter_mut()
            .position(|g| g.text == text && (name.is_some() || g.names.is_empty()))
        {
            Some(i) => &mut self.groups[i],
            None if self.groups.len() < MAX_GROUPS => {
                self.groups.push(Group {
                    text: text.to_string(),
                    names: Vec::new(),
                    count: 0,
                });
                let last = self.groups.len() - 1;
                &mut self.groups[last]
            }
            None => {
                self.dropped += 1;
                return;
            }
        };
        group.count += 1;
        if let Some(name) = name
            && group.names.len() < MAX_NAMES
        {
            group.names.push(cut(name, MAX_NAME));
        }
    }

    /// Add several.
    pub fn extend<S: AsRef<str>>(&mut self, warnings: impl IntoIterator<Item = S>) {
        for w in warnings {
            self.push(w.as_ref());
        }
    }

    /// The header value: visible ASCII only, at most [`MAX_HEADER`] bytes.
    pub fn header_value(&self) -> String {
        let mut parts: Vec<String> = self.groups.iter().map(Group::render).collect();
        if self.dropped > 0 {
            parts.push(format!("{} more warnings", self.dropped));
        }
        let joined = parts.join("; ");
        let mut out: String = joined
            .chars()
            .map(|c| {
                if c == ' ' || c.is_ascii_graphic() {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        if out.len() > MAX_HEADER {
            out.truncate(MAX_HEADER - 3);
            out.push_str("...");
        }
        out
    }
}

impl Group {
    fn render(&self) -> String {
        match (self.names.as_slice(), self.count) {
            ([], 1) => self.text.clone(),
            ([], n) => format!("{} (x{n})", self.text),
            ([name], 1) => format!("'{name}' {}", self.text),
            (names, n) => {
                let listed = names
                    .iter()
                    .map(|name| format!("'{name}'"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let more = n.saturating_sub(names.len());
                let more = if more > 0 {
                    format!(", ... (+{more})")
                } else {
                    String::new()
                };
                format!("{n} parameters {}: {listed}{more}", plural(&self.text))
            }
        }
    }
}

/// The text of a one-parameter warning, said of several.
fn plural(text: &str) -> String {
    text.replacen("is not", "are not", 1)
        .replacen("only applies", "only apply", 1)
        .replacen("was dropped", "were dropped", 1)
}

fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_reads_as_before() {
        let mut w = Warnings::default();
        w.push("'seed' is not supported by anthropic and was dropped");
        assert_eq!(
            w.header_value(),
            "'seed' is not supported by anthropic and was dropped"
        );
    }

    #[test]
    fn many_parameters_are_summarized_and_bounded() {
        let mut w = Warnings::default();
        for i in 0..10_000 {
            w.push(&format!(
                "'p{i}' is not supported by anthropic and was dropped"
            ));
        }
        w.push("'temperature' above 1 was lowered to anthropic's maximum of 1");
        assert_eq!(w.groups.len(), 2);
        assert!(w.groups.iter().all(|g| g.names.len() <= MAX_NAMES));
        let v = w.header_value();
        assert!(
            v.starts_with(
                "10000 parameters are not supported by anthropic and were dropped: 'p0', 'p1'"
            ),
            "{v}"
        );
        assert!(v.contains("(+9992)"), "{v}");
        assert!(v.contains("'temperature' above 1"), "{v}");
        assert!(v.len() <= MAX_HEADER);
    }

    #[test]
    fn distinct_warnings_hostile_names_and_length_are_bounded() {
        let mut w = Warnings::default();
        w.push(&format!(
            "'n\u{e9}\n{}' is not supported",
            "n".repeat(5_000)
        ));
        for i in 0..1_000 {
            w.push(&format!("warning number {i} {}", "x".repeat(100)));
        }
        assert_eq!(w.groups.len(), MAX_GROUPS);
        assert_eq!(w.dropped, 1_001 - MAX_GROUPS);
        let v = w.header_value();
        assert!(v.len() <= MAX_HEADER, "{}", v.len());
        assert!(v.bytes().all(|b| b == b' ' || b.is_ascii_graphic()));
        assert!(http::HeaderValue::from_str(&v).is_ok());
    }
}
