//! The query body the Azure CLI sends.
//!
//! `az iot dps enrollment list` and `enrollment-group list` (azure-iot extension 0.25.0) hand the
//! generated SDK a `QuerySpecification` model where it wants a string, and msrest serialises the
//! model with Python's `repr`, so the body reads
//! `{"query": "{'additional_properties': {}, 'query': 'SELECT *'}"}`. Azure answers it with the
//! enrollments, so Usher takes the inner `query` out of that text. Only a text that is exactly such
//! a model (a Python dict literal whose keys are `query` and `additional_properties`, with a text
//! `query`) is unwrapped; anything else stays a query and a typo in it stays an error.
//!
//! Written by hand because it reads a few dozen characters of one fixed shape; no crate parses
//! Python literals for this.

/// The inner query of an msrest `QuerySpecification` repr, or `None` if `text` is not one.
pub fn unwrap_query_specification(text: &str) -> Option<String> {
    let mut p = Parser {
        rest: text.trim(),
        depth: 0,
    };
    let Literal::Dict(entries) = p.literal()? else {
        return None;
    };
    if !p.rest.trim().is_empty() {
        return None;
    }
    let mut query = None;
    for (key, value) in entries {
        match (key.as_str(), value) {
            ("query", Literal::Text(q)) => query = Some(q),
            ("additional_properties", Literal::Dict(_) | Literal::None) => {}
            _ => return None,
        }
    }
    query
}

/// The Python literals a model repr holds.
enum Literal {
    Text(String),
    Dict(Vec<(String, Self)>),
    None,
    Other,
}

struct Parser<'a> {
    rest: &'a str,
    depth: usize,
}

/// Deeper nesting than this is not an msrest model.
const MAX_DEPTH: usize = 8;

impl Parser<'_> {
    fn eat(&mut self, token: &str) -> bool {
        self.rest = self.rest.trim_start();
        match self.rest.strip_prefix(token) {
            Some(r) => {
                self.rest = r;
                true
            }
            None => false,
        }
    }

    fn literal(&mut self) -> Option<Literal> {
        self.rest = self.rest.trim_start();
        match self.rest.chars().next()? {
            '{' => self.dict(),
            '\'' | '"' => self.text().map(Literal::Text),
            _ => {
                for (word, lit) in [
                    ("None", Literal::None),
                    ("True", Literal::Other),
                    ("False", Literal::Other),
                ] {
                    if self.eat(word) {
                        return Some(lit);
                    }
                }
                let end = self
                    .rest
                    .find(|c: char| {
                        !(c.is_ascii_digit() || matches!(c, '-' | '.' | 'e' | 'E' | '+'))
                    })
                    .unwrap_or(self.rest.len());
                if end == 0 {
                    return None;
                }
                self.rest = &self.rest[end..];
                Some(Literal::Other)
            }
        }
    }

    fn dict(&mut self) -> Option<Literal> {
        self.depth += 1;
        if self.depth > MAX_DEPTH || !self.eat("{") {
            return None;
        }
        let mut entries = Vec::new();
        if !self.eat("}") {
            loop {
                self.rest = self.rest.trim_start();
                let key = self.text()?;
                if !self.eat(":") {
                    return None;
                }
                entries.push((key, self.literal()?));
                if self.eat("}") {
                    break;
                }
                if !self.eat(",") {
                    return None;
                }
            }
        }
        self.depth -= 1;
        Some(Literal::Dict(entries))
    }

    /// A Python text literal in either quote, with the escapes `repr` writes.
    fn text(&mut self) -> Option<String> {
        let mut chars = self.rest.char_indices();
        let (_, quote) = chars.next().filter(|(_, c)| matches!(c, '\'' | '"'))?;
        let mut out = String::new();
        while let Some((i, c)) = chars.next() {
            match c {
                c if c == quote => {
                    self.rest = &self.rest[i + c.len_utf8()..];
                    return Some(out);
                }
                '\\' => {
                    let (_, e) = chars.next()?;
                    out.push(match e {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        other => other,
                    });
                }
                c => out.push(c),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::unwrap_query_specification as unwrap;

    #[test]
    fn the_azure_cli_body_is_unwrapped() {
        assert_eq!(
            unwrap("{'additional_properties': {}, 'query': 'SELECT *'}").as_deref(),
            Some("SELECT *")
        );
        assert_eq!(unwrap("{'query': '*'}").as_deref(), Some("*"));
        // repr switches to double quotes when the text holds a single quote.
        assert_eq!(
            unwrap(
                r#"{'additional_properties': {}, 'query': "SELECT * WHERE registrationId = 'a'"}"#
            )
            .as_deref(),
            Some("SELECT * WHERE registrationId = 'a'")
        );
        assert_eq!(
            unwrap(r"{'query': 'it\'s', 'additional_properties': None}").as_deref(),
            Some("it's")
        );
    }

    #[test]
    fn anything_else_is_left_alone() {
        for text in [
            "SELECT *",
            "SELECT * FROM enrollments WHERE provisioningStatus = 'disabled'",
            "{'additional_properties': {}}",
            "{'query': 'SELECT *', 'other': 1}",
            "{'query': 'SELECT *'} trailing",
            "{'query': 'SELECT *'",
            "{'query': 5}",
            "{'query' 'SELECT *'}",
            "{",
            "",
            "{{{{{{{{{{{{",
        ] {
            assert_eq!(unwrap(text), None, "{text}");
        }
    }
}
