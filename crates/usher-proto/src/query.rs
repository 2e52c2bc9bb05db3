//! The query language of the management API's query routes.
//!
//! DPS accepts only `SELECT *` (or `*`). Usher also accepts a `WHERE` clause over the documented
//! fields, so operators can ask for, say, the disabled enrollments:
//!
//! ```text
//! query      := '*' | SELECT '*' [FROM name] [WHERE expr]
//! expr       := term { OR term }
//! term       := factor { AND factor }
//! factor     := NOT factor | '(' expr ')' | comparison
//! comparison := path ('=' | '!=' | '<>') literal | path IS [NOT] NULL
//! path       := name { '.' name }            e.g. attestation.type, registrationState.status
//! literal    := 'text' (a quote inside is doubled: 'it''s') | number | true | false | null
//! ```
//!
//! Keywords are case-insensitive. Text comparisons are case-insensitive (DPS identifiers and enum
//! values are). A path that is absent reads as null, except `provisioningStatus`, whose absence
//! means `enabled`.

mod msrest;

use serde_json::Value;

pub use msrest::unwrap_query_specification;

/// Why a query was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("the query is empty")]
    Empty,
    #[error("expected {expected} at position {position}, found {found:?}")]
    Unexpected {
        expected: &'static str,
        found: String,
        position: usize,
    },
    #[error("unterminated text literal starting at position {0}")]
    UnterminatedText(usize),
    #[error("the query is longer than {0} characters")]
    TooLong(usize),
    #[error("the query nests deeper than {0} levels")]
    TooDeep(usize),
}

/// Longest query accepted.
pub const MAX_QUERY_LEN: usize = 4096;
const MAX_DEPTH: usize = 32;

/// A parsed query: an optional filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    filter: Option<Expr>,
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Or(Box<Self>, Box<Self>),
    And(Box<Self>, Box<Self>),
    Not(Box<Self>),
    Eq(Vec<String>, Value),
    IsNull(Vec<String>),
}

impl Query {
    /// Parses a query string.
    pub fn parse(text: &str) -> Result<Self, QueryError> {
        if text.len() > MAX_QUERY_LEN {
            return Err(QueryError::TooLong(MAX_QUERY_LEN));
        }
        let tokens = tokenize(text)?;
        if tokens.is_empty() {
            return Err(QueryError::Empty);
        }
        let mut p = Parser {
            tokens,
            pos: 0,
            depth: 0,
            end: text.len(),
        };
        if p.peek_is(&Tok::Star) && p.tokens.len() == 1 {
            return Ok(Self { filter: None });
        }
        p.keyword("SELECT")?;
        p.expect(&Tok::Star, "*")?;
        if p.eat_keyword("FROM") {
            p.name()?;
        }
        let filter = if p.eat_keyword("WHERE") {
            Some(p.expr()?)
        } else {
            None
        };
        if let Some((tok, position)) = p.tokens.get(p.pos) {
            return Err(QueryError::Unexpected {
                expected: "the end of the query",
                found: tok.text(),
                position: *position,
            });
        }
        Ok(Self { filter })
    }

    /// Whether the query selects everything.
    pub fn is_unfiltered(&self) -> bool {
        self.filter.is_none()
    }

    /// Whether `record` matches.
    pub fn matches(&self, record: &Value) -> bool {
        self.filter.as_ref().is_none_or(|f| eval(f, record))
    }
}

fn eval(expr: &Expr, record: &Value) -> bool {
    match expr {
        Expr::Or(a, b) => eval(a, record) || eval(b, record),
        Expr::And(a, b) => eval(a, record) && eval(b, record),
        Expr::Not(a) => !eval(a, record),
        Expr::IsNull(path) => lookup(record, path).is_null(),
        Expr::Eq(path, literal) => equal(&lookup(record, path), literal),
    }
}

fn lookup(record: &Value, path: &[String]) -> Value {
    let mut current = record;
    for (i, name) in path.iter().enumerate() {
        let next = current.as_object().and_then(|o| {
            o.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        });
        match next {
            Some(v) => current = v,
            None if i == 0
                && path.len() == 1
                && name.eq_ignore_ascii_case("provisioningStatus") =>
            {
                return Value::String("enabled".into());
            }
            None => return Value::Null,
        }
    }
    if current.is_null() && path.len() == 1 && path[0].eq_ignore_ascii_case("provisioningStatus") {
        return Value::String("enabled".into());
    }
    current.clone()
}

fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => x.eq_ignore_ascii_case(y),
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Star,
    LParen,
    RParen,
    Dot,
    Eq,
    NotEq,
    Word(String),
    Text(String),
    Number(serde_json::Number),
}

impl Tok {
    fn text(&self) -> String {
        match self {
            Self::Star => "*".into(),
            Self::LParen => "(".into(),
            Self::RParen => ")".into(),
            Self::Dot => ".".into(),
            Self::Eq => "=".into(),
            Self::NotEq => "!=".into(),
            Self::Word(w) => w.clone(),
            Self::Text(t) => format!("'{t}'"),
            Self::Number(n) => n.to_string(),
        }
    }
}

fn tokenize(text: &str) -> Result<Vec<(Tok, usize)>, QueryError> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let (pos, c) = chars[i];
        let single = match c {
            '*' => Some(Tok::Star),
            '(' => Some(Tok::LParen),
            ')' => Some(Tok::RParen),
            '.' => Some(Tok::Dot),
            '=' => Some(Tok::Eq),
            _ => None,
        };
        if let Some(tok) = single {
            out.push((tok, pos));
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '!' || c == '<' {
            let next = chars.get(i + 1).map(|(_, c)| *c);
            if (c == '!' && next == Some('=')) || (c == '<' && next == Some('>')) {
                out.push((Tok::NotEq, pos));
                i += 2;
            } else {
                return Err(QueryError::Unexpected {
                    expected: "!= or <>",
                    found: c.to_string(),
                    position: pos,
                });
            }
        } else if c == '\'' {
            let mut value = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(QueryError::UnterminatedText(pos)),
                    Some((_, '\'')) if chars.get(i + 1).map(|(_, c)| *c) == Some('\'') => {
                        value.push('\'');
                        i += 2;
                    }
                    Some((_, '\'')) => {
                        i += 1;
                        break;
                    }
                    Some((_, ch)) => {
                        value.push(*ch);
                        i += 1;
                    }
                }
            }
            out.push((Tok::Text(value), pos));
        } else if c.is_ascii_digit() || c == '-' {
            let start = i;
            i += 1;
            while chars
                .get(i)
                .is_some_and(|(_, c)| c.is_ascii_digit() || *c == '.' || *c == 'e' || *c == 'E')
            {
                i += 1;
            }
            let literal: String = chars[start..i].iter().map(|(_, c)| c).collect();
            let number =
                literal
                    .parse::<serde_json::Number>()
                    .map_err(|_| QueryError::Unexpected {
                        expected: "a number",
                        found: literal.clone(),
                        position: pos,
                    })?;
            out.push((Tok::Number(number), pos));
        } else if c.is_alphanumeric() || c == '_' || c == '$' {
            let start = i;
            while chars
                .get(i)
                .is_some_and(|(_, c)| c.is_alphanumeric() || *c == '_' || *c == '$')
            {
                i += 1;
            }
            out.push((
                Tok::Word(chars[start..i].iter().map(|(_, c)| c).collect()),
                pos,
            ));
        } else {
            return Err(QueryError::Unexpected {
                expected: "a name, a literal or an operator",
                found: c.to_string(),
                position: pos,
            });
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<(Tok, usize)>,
    pos: usize,
    depth: usize,
    /// The query's length: the position reported for "the end of the query".
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos).map(|(t, _)| t)
    }

    fn peek_is(&self, tok: &Tok) -> bool {
        self.peek() == Some(tok)
    }

    fn unexpected(&self, expected: &'static str) -> QueryError {
        match self.tokens.get(self.pos) {
            Some((tok, position)) => QueryError::Unexpected {
                expected,
                found: tok.text(),
                position: *position,
            },
            None => QueryError::Unexpected {
                expected,
                found: "the end of the query".into(),
                position: self.end,
            },
        }
    }

    fn expect(&mut self, tok: &Tok, expected: &'static str) -> Result<(), QueryError> {
        if self.peek_is(tok) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.unexpected(expected))
        }
    }

    fn is_keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(word))
    }

    fn eat_keyword(&mut self, word: &str) -> bool {
        let yes = self.is_keyword(word);
        if yes {
            self.pos += 1;
        }
        yes
    }

    fn keyword(&mut self, word: &'static str) -> Result<(), QueryError> {
        if self.eat_keyword(word) {
            Ok(())
        } else {
            Err(self.unexpected(word))
        }
    }

    fn name(&mut self) -> Result<String, QueryError> {
        match self.peek() {
            Some(Tok::Word(w)) => {
                let w = w.clone();
                self.pos += 1;
                Ok(w)
            }
            _ => Err(self.unexpected("a name")),
        }
    }

    fn expr(&mut self) -> Result<Expr, QueryError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(QueryError::TooDeep(MAX_DEPTH));
        }
        let mut left = self.term()?;
        while self.eat_keyword("OR") {
            left = Expr::Or(Box::new(left), Box::new(self.term()?));
        }
        self.depth -= 1;
        Ok(left)
    }

    fn term(&mut self) -> Result<Expr, QueryError> {
        let mut left = self.factor()?;
        while self.eat_keyword("AND") {
            left = Expr::And(Box::new(left), Box::new(self.factor()?));
        }
        Ok(left)
    }

    fn factor(&mut self) -> Result<Expr, QueryError> {
        if self.eat_keyword("NOT") {
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(QueryError::TooDeep(MAX_DEPTH));
            }
            let inner = self.factor()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        if self.peek_is(&Tok::LParen) {
            self.pos += 1;
            let inner = self.expr()?;
            self.expect(&Tok::RParen, ")")?;
            return Ok(inner);
        }
        let mut path = vec![self.name()?];
        while self.peek_is(&Tok::Dot) {
            self.pos += 1;
            path.push(self.name()?);
        }
        if self.eat_keyword("IS") {
            let negate = self.eat_keyword("NOT");
            self.keyword("NULL")?;
            let test = Expr::IsNull(path);
            return Ok(if negate {
                Expr::Not(Box::new(test))
            } else {
                test
            });
        }
        let negate = match self.peek() {
            Some(Tok::Eq) => false,
            Some(Tok::NotEq) => true,
            _ => return Err(self.unexpected("=, != or IS")),
        };
        self.pos += 1;
        let literal = match self.peek().cloned() {
            Some(Tok::Text(t)) => Value::String(t),
            Some(Tok::Number(n)) => Value::Number(n),
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("true") => Value::Bool(true),
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("false") => Value::Bool(false),
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("null") => Value::Null,
            _ => return Err(self.unexpected("a literal ('text', a number, true, false or null)")),
        };
        self.pos += 1;
        let test = Expr::Eq(path, literal);
        Ok(if negate {
            Expr::Not(Box::new(test))
        } else {
            test
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn records() -> Vec<Value> {
        vec![
            json!({"registrationId": "a", "attestation": {"type": "symmetricKey"}, "allocationPolicy": "static", "capabilities": {"iotEdge": true}}),
            json!({"registrationId": "b", "attestation": {"type": "x509"}, "provisioningStatus": "disabled"}),
            json!({"registrationId": "c", "attestation": {"type": "symmetricKey"}, "provisioningStatus": "enabled", "deviceId": "it's"}),
        ]
    }

    fn ids(query: &str) -> Vec<String> {
        let q = Query::parse(query).unwrap();
        records()
            .iter()
            .filter(|r| q.matches(r))
            .map(|r| r["registrationId"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn dps_forms_select_everything() {
        for q in [
            "*",
            "SELECT *",
            "select *",
            "SELECT * FROM enrollments",
            "  SELECT   *  ",
        ] {
            assert!(Query::parse(q).unwrap().is_unfiltered(), "{q}");
            assert_eq!(ids(q), ["a", "b", "c"]);
        }
    }

    #[test]
    fn filters() {
        assert_eq!(
            ids("SELECT * FROM enrollments WHERE provisioningStatus = 'disabled'"),
            ["b"]
        );
        assert_eq!(
            ids("SELECT * WHERE provisioningStatus = 'ENABLED'"),
            ["a", "c"],
            "absent means enabled"
        );
        assert_eq!(
            ids(
                "SELECT * WHERE attestation.type = 'symmetricKey' AND NOT allocationPolicy = 'static'"
            ),
            ["c"]
        );
        assert_eq!(ids("SELECT * WHERE allocationPolicy IS NULL"), ["b", "c"]);
        assert_eq!(
            ids("SELECT * WHERE allocationPolicy IS NOT NULL OR registrationId = 'b'"),
            ["a", "b"]
        );
        assert_eq!(ids("SELECT * WHERE capabilities.iotEdge = true"), ["a"]);
        assert_eq!(ids("SELECT * WHERE deviceId = 'it''s'"), ["c"]);
        assert_eq!(
            ids(
                "SELECT * WHERE (registrationId = 'a' OR registrationId = 'c') AND attestation.type <> 'x509'"
            ),
            ["a", "c"]
        );
        assert_eq!(ids("SELECT * WHERE registrationId != 'a'"), ["b", "c"]);
    }

    #[test]
    fn errors_say_where() {
        assert_eq!(Query::parse(""), Err(QueryError::Empty));
        assert_eq!(
            Query::parse("SELECT * WHERE"),
            Err(QueryError::Unexpected {
                expected: "a name",
                found: "the end of the query".into(),
                position: 14
            })
        );
        assert_eq!(
            Query::parse("SELECT * WHERE a = 'x"),
            Err(QueryError::UnterminatedText(19))
        );
        assert_eq!(
            Query::parse("SELECT * WHERE a > 1"),
            Err(QueryError::Unexpected {
                expected: "a name, a literal or an operator",
                found: ">".into(),
                position: 17
            })
        );
        assert_eq!(
            Query::parse("SELECT * WHERE a ! 1"),
            Err(QueryError::Unexpected {
                expected: "!= or <>",
                found: "!".into(),
                position: 17
            })
        );
        assert!(matches!(
            Query::parse("DELETE *"),
            Err(QueryError::Unexpected {
                expected: "SELECT",
                ..
            })
        ));
        assert!(matches!(
            Query::parse("SELECT * WHERE a = 1 b"),
            Err(QueryError::Unexpected {
                expected: "the end of the query",
                ..
            })
        ));
        assert_eq!(
            Query::parse(&"(".repeat(100)),
            Err(QueryError::Unexpected {
                expected: "SELECT",
                found: "(".into(),
                position: 0
            })
        );
        let deep = format!("SELECT * WHERE {}a = 1{}", "(".repeat(40), ")".repeat(40));
        assert_eq!(Query::parse(&deep), Err(QueryError::TooDeep(32)));
        assert_eq!(
            Query::parse(&"x".repeat(5000)),
            Err(QueryError::TooLong(4096))
        );
    }
}
