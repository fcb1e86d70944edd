//! The SQL92 filter language: tokenizer, recursive-descent parser and a
//! three-valued evaluator (grammar in the parent module's docs).

use super::FilterError;

/// A value during evaluation; `Null` is SQL's UNKNOWN.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(f64),
    Text(String),
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Literal(Value),
    Property(String),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Compare(Cmp, Box<Expr>, Box<Expr>),
    IsNull(Box<Expr>, bool),
    Between(Box<Expr>, Box<Expr>, Box<Expr>, bool),
    In(Box<Expr>, Vec<Value>, bool),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Keyword(&'static str),
    Str(String),
    Num(f64),
    Op(&'static str),
    LParen,
    RParen,
    Comma,
    End,
}

const KEYWORDS: [&str; 10] = [
    "AND", "OR", "NOT", "IS", "NULL", "BETWEEN", "IN", "TRUE", "FALSE", "LIKE",
];

fn error(position: usize, message: impl Into<String>) -> FilterError {
    FilterError {
        kind: "SQL",
        position,
        message: message.into(),
    }
}

/// Splits an expression into `(position, token)` pairs, ending with `End`.
fn tokenize(input: &str) -> Result<Vec<(usize, Tok)>, FilterError> {
    let chars: Vec<char> = input.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let tok = match c {
            '(' => {
                i += 1;
                Tok::LParen
            }
            ')' => {
                i += 1;
                Tok::RParen
            }
            ',' => {
                i += 1;
                Tok::Comma
            }
            '=' => {
                i += 1;
                if chars.get(i) == Some(&'=') {
                    return Err(error(start, "'==' is not SQL; use '='"));
                }
                Tok::Op("=")
            }
            '<' | '>' => {
                i += 1;
                match (c, chars.get(i)) {
                    ('<', Some('=')) => {
                        i += 1;
                        Tok::Op("<=")
                    }
                    ('<', Some('>')) => {
                        i += 1;
                        Tok::Op("<>")
                    }
                    ('>', Some('=')) => {
                        i += 1;
                        Tok::Op(">=")
                    }
                    ('<', _) => Tok::Op("<"),
                    _ => Tok::Op(">"),
                }
            }
            '\'' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(error(start, "unterminated string")),
                        Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                            s.push('\'');
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(ch) => {
                            s.push(*ch);
                            i += 1;
                        }
                    }
                }
                Tok::Str(s)
            }
            c if c.is_ascii_digit()
                || c == '.'
                || (c == '-'
                    && chars
                        .get(i + 1)
                        .is_some_and(|n| n.is_ascii_digit() || *n == '.')) =>
            {
                i += 1;
                while i < chars.len()
                    && (chars[i].is_ascii_digit()
                        || chars[i] == '.'
                        || chars[i] == 'e'
                        || chars[i] == 'E')
                {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                Tok::Num(
                    text.parse()
                        .map_err(|_| error(start, format!("bad number {text:?}")))?,
                )
            }
            c if c.is_alphabetic() || c == '_' => {
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '.')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                match KEYWORDS.iter().find(|k| k.eq_ignore_ascii_case(&word)) {
                    Some(k) => Tok::Keyword(k),
                    None => Tok::Ident(word),
                }
            }
            other => return Err(error(start, format!("unexpected character {other:?}"))),
        };
        out.push((start, tok));
    }
    out.push((chars.len(), Tok::End));
    Ok(out)
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.at].1
    }
    fn position(&self) -> usize {
        self.toks[self.at].0
    }
    fn bump(&mut self) -> Tok {
        let t = self.toks[self.at].1.clone();
        if self.at + 1 < self.toks.len() {
            self.at += 1;
        }
        t
    }
    fn keyword(&mut self, k: &str) -> bool {
        if matches!(self.peek(), Tok::Keyword(x) if *x == k) {
            self.bump();
            true
        } else {
            false
        }
    }
    fn unexpected(&self, wanted: &str) -> FilterError {
        let found = match self.peek() {
            Tok::End => "the end".to_string(),
            Tok::Ident(s) => format!("{s:?}"),
            Tok::Keyword(k) => (*k).to_string(),
            Tok::Str(s) => format!("'{s}'"),
            Tok::Num(n) => n.to_string(),
            Tok::Op(o) => format!("'{o}'"),
            Tok::LParen => "'('".into(),
            Tok::RParen => "')'".into(),
            Tok::Comma => "','".into(),
        };
        error(self.position(), format!("expected {wanted}, found {found}"))
    }

    fn expr(&mut self) -> Result<Expr, FilterError> {
        let mut left = self.and()?;
        while self.keyword("OR") {
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, FilterError> {
        let mut left = self.not()?;
        while self.keyword("AND") {
            left = Expr::And(Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Expr, FilterError> {
        if self.keyword("NOT") {
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        self.test()
    }

    fn test(&mut self) -> Result<Expr, FilterError> {
        let left = self.operand()?;
        if let Tok::Op(op) = self.peek().clone() {
            self.bump();
            let cmp = match op {
                "=" => Cmp::Eq,
                "<>" => Cmp::Ne,
                "<" => Cmp::Lt,
                "<=" => Cmp::Le,
                ">" => Cmp::Gt,
                _ => Cmp::Ge,
            };
            return Ok(Expr::Compare(
                cmp,
                Box::new(left),
                Box::new(self.operand()?),
            ));
        }
        if self.keyword("IS") {
            let negated = self.keyword("NOT");
            if !self.keyword("NULL") {
                return Err(self.unexpected("NULL"));
            }
            return Ok(Expr::IsNull(Box::new(left), negated));
        }
        let negated = self.keyword("NOT");
        if self.keyword("BETWEEN") {
            let low = self.operand()?;
            if !self.keyword("AND") {
                return Err(self.unexpected("AND"));
            }
            let high = self.operand()?;
            return Ok(Expr::Between(
                Box::new(left),
                Box::new(low),
                Box::new(high),
                negated,
            ));
        }
        if self.keyword("IN") {
            if self.bump() != Tok::LParen {
                self.at -= 1;
                return Err(self.unexpected("'('"));
            }
            let mut values = vec![self.literal()?];
            while *self.peek() == Tok::Comma {
                self.bump();
                values.push(self.literal()?);
            }
            if *self.peek() != Tok::RParen {
                return Err(self.unexpected("',' or ')'"));
            }
            self.bump();
            return Ok(Expr::In(Box::new(left), values, negated));
        }
        if negated {
            return Err(self.unexpected("BETWEEN or IN"));
        }
        Ok(left)
    }

    fn literal(&mut self) -> Result<Value, FilterError> {
        let v = match self.peek() {
            Tok::Str(s) => Value::Text(s.clone()),
            Tok::Num(n) => Value::Number(*n),
            Tok::Keyword("TRUE") => Value::Bool(true),
            Tok::Keyword("FALSE") => Value::Bool(false),
            Tok::Keyword("NULL") => Value::Null,
            _ => return Err(self.unexpected("a literal")),
        };
        self.bump();
        Ok(v)
    }

    fn operand(&mut self) -> Result<Expr, FilterError> {
        match self.peek().clone() {
            Tok::LParen => {
                self.bump();
                let e = self.expr()?;
                if *self.peek() != Tok::RParen {
                    return Err(self.unexpected("')'"));
                }
                self.bump();
                Ok(e)
            }
            Tok::Ident(name) => {
                self.bump();
                Ok(Expr::Property(name))
            }
            _ => self
                .literal()
                .map(Expr::Literal)
                .map_err(|_| self.unexpected("a property, a literal or '('")),
        }
    }
}

/// Parses a whole expression.
pub fn parse(input: &str) -> Result<Expr, FilterError> {
    let mut p = Parser {
        toks: tokenize(input)?,
        at: 0,
    };
    if *p.peek() == Tok::End {
        return Err(p.unexpected("an expression"));
    }
    let e = p.expr()?;
    if *p.peek() != Tok::End {
        return Err(p.unexpected("AND, OR or the end"));
    }
    Ok(e)
}

/// A property's text as the value it compares as: numbers and booleans when
/// the text is one, else text.
fn typed(text: String) -> Value {
    if let Ok(n) = text.parse::<f64>() {
        return Value::Number(n);
    }
    match text.as_str() {
        "true" | "TRUE" => Value::Bool(true),
        "false" | "FALSE" => Value::Bool(false),
        _ => Value::Text(text),
    }
}

fn compare(cmp: Cmp, a: &Value, b: &Value) -> Value {
    use std::cmp::Ordering;
    let order = match (a, b) {
        (Value::Null, _) | (_, Value::Null) => return Value::Null,
        (Value::Number(x), Value::Number(y)) => x.partial_cmp(y),
        (Value::Text(x), Value::Text(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) if matches!(cmp, Cmp::Eq | Cmp::Ne) => Some(x.cmp(y)),
        // Mixed types: only (in)equality is defined, and they are unequal.
        _ => {
            return match cmp {
                Cmp::Eq => Value::Bool(false),
                Cmp::Ne => Value::Bool(true),
                _ => Value::Null,
            };
        }
    };
    let Some(o) = order else { return Value::Null };
    Value::Bool(match cmp {
        Cmp::Eq => o == Ordering::Equal,
        Cmp::Ne => o != Ordering::Equal,
        Cmp::Lt => o == Ordering::Less,
        Cmp::Le => o != Ordering::Greater,
        Cmp::Gt => o == Ordering::Greater,
        Cmp::Ge => o != Ordering::Less,
    })
}

fn not(v: Value) -> Value {
    match v {
        Value::Bool(b) => Value::Bool(!b),
        _ => Value::Null,
    }
}

impl Expr {
    /// Evaluates with `lookup` giving a property's text (None: missing).
    pub fn eval(&self, lookup: &dyn Fn(&str) -> Option<String>) -> Value {
        match self {
            Expr::Literal(v) => v.clone(),
            Expr::Property(name) => lookup(name).map_or(Value::Null, typed),
            Expr::Not(e) => not(e.eval(lookup)),
            Expr::And(a, b) => match (a.eval(lookup), b.eval(lookup)) {
                (Value::Bool(false), _) | (_, Value::Bool(false)) => Value::Bool(false),
                (Value::Bool(true), Value::Bool(true)) => Value::Bool(true),
                _ => Value::Null,
            },
            Expr::Or(a, b) => match (a.eval(lookup), b.eval(lookup)) {
                (Value::Bool(true), _) | (_, Value::Bool(true)) => Value::Bool(true),
                (Value::Bool(false), Value::Bool(false)) => Value::Bool(false),
                _ => Value::Null,
            },
            Expr::Compare(cmp, a, b) => compare(*cmp, &a.eval(lookup), &b.eval(lookup)),
            Expr::IsNull(e, negated) => {
                let is_null = e.eval(lookup) == Value::Null;
                Value::Bool(is_null != *negated)
            }
            Expr::Between(e, low, high, negated) => {
                let v = e.eval(lookup);
                let inside = match (
                    compare(Cmp::Ge, &v, &low.eval(lookup)),
                    compare(Cmp::Le, &v, &high.eval(lookup)),
                ) {
                    (Value::Bool(a), Value::Bool(b)) => Value::Bool(a && b),
                    (Value::Bool(false), _) | (_, Value::Bool(false)) => Value::Bool(false),
                    _ => Value::Null,
                };
                if *negated { not(inside) } else { inside }
            }
            Expr::In(e, values, negated) => {
                let v = e.eval(lookup);
                if v == Value::Null {
                    return Value::Null;
                }
                let found = values
                    .iter()
                    .any(|x| compare(Cmp::Eq, &v, x) == Value::Bool(true));
                Value::Bool(found != *negated)
            }
        }
    }
}
