//! The SQL92 filter language: tokenizer, recursive-descent parser and a
//! three-valued evaluator (grammar in the parent module's docs).
//!
//! The parser enforces the limits of the parent module while it reads: the
//! text's length before tokenizing, the nesting depth before each recursion and
//! the node count before each node, so no input can make it (or the tree it
//! builds) deeper or larger than they allow.

use super::{FilterError, MAX_NESTING, MAX_NODES, excerpt};

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

/// A parsed expression. A run of `AND`s (or `OR`s) at one level is one node
/// with all its terms, so long chains make the tree wide, not deep.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Literal(Value),
    Property(String),
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
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
                        .map_err(|_| error(start, format!("bad number {:?}", excerpt(&text))))?,
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
    /// Parentheses and NOTs open around the token being read.
    nesting: usize,
    /// Nodes built so far (IN list values count as nodes).
    nodes: usize,
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
        if self.at_keyword(k) {
            self.bump();
            true
        } else {
            false
        }
    }
    fn unexpected(&self, wanted: &str) -> FilterError {
        let found = match self.peek() {
            Tok::End => "the end".to_string(),
            Tok::Ident(s) => format!("{:?}", excerpt(s)),
            Tok::Keyword(k) => (*k).to_string(),
            Tok::Str(s) => format!("'{}'", excerpt(s)),
            Tok::Num(n) => n.to_string(),
            Tok::Op(o) => format!("'{o}'"),
            Tok::LParen => "'('".into(),
            Tok::RParen => "')'".into(),
            Tok::Comma => "','".into(),
        };
        error(self.position(), format!("expected {wanted}, found {found}"))
    }

    /// Counts the node about to be built at the current token, refusing the
    /// one past [`MAX_NODES`].
    fn node(&mut self) -> Result<(), FilterError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(error(
                self.position(),
                format!(
                    "more than {MAX_NODES} nodes (properties, literals and operators); \
                     use fewer terms or IN lists"
                ),
            ));
        }
        Ok(())
    }

    /// Opens one nesting level (a parenthesis or a NOT at `at`), refusing
    /// the one past [`MAX_NESTING`] before the parser recurses into it.
    fn enter(&mut self, at: usize) -> Result<(), FilterError> {
        if self.nesting == MAX_NESTING {
            return Err(error(
                at,
                format!("nested deeper than {MAX_NESTING} levels (each parenthesis or NOT is one)"),
            ));
        }
        self.nesting += 1;
        Ok(())
    }

    fn at_keyword(&self, k: &str) -> bool {
        matches!(self.peek(), Tok::Keyword(x) if *x == k)
    }

    // `expr` and `and` repeat their loop rather than share a helper: each
    // helper would be one more stack frame per nesting level.
    fn expr(&mut self) -> Result<Expr, FilterError> {
        let first = self.and()?;
        if !self.at_keyword("OR") {
            return Ok(first);
        }
        self.node()?;
        let mut terms = vec![first];
        while self.keyword("OR") {
            terms.push(self.and()?);
        }
        Ok(Expr::Or(terms))
    }

    fn and(&mut self) -> Result<Expr, FilterError> {
        let first = self.not()?;
        if !self.at_keyword("AND") {
            return Ok(first);
        }
        self.node()?;
        let mut terms = vec![first];
        while self.keyword("AND") {
            terms.push(self.not()?);
        }
        Ok(Expr::And(terms))
    }

    fn not(&mut self) -> Result<Expr, FilterError> {
        let at = self.position();
        if !self.keyword("NOT") {
            return self.test();
        }
        self.node()?;
        self.enter(at)?;
        let negated = self.not();
        self.nesting -= 1;
        Ok(Expr::Not(Box::new(negated?)))
    }

    // Each form of test is its own function: the parser recurses through
    // operands, and a debug build gives one function all its branches' stack.
    fn test(&mut self) -> Result<Expr, FilterError> {
        let left = self.operand()?;
        if let Tok::Op(op) = *self.peek() {
            return self.compare(left, op);
        }
        if self.keyword("IS") {
            return self.is_null(left);
        }
        let negated = self.keyword("NOT");
        if self.keyword("BETWEEN") {
            return self.between(left, negated);
        }
        if self.keyword("IN") {
            return self.in_list(left, negated);
        }
        if negated {
            return Err(self.unexpected("BETWEEN or IN"));
        }
        Ok(left)
    }

    fn compare(&mut self, left: Expr, op: &str) -> Result<Expr, FilterError> {
        self.node()?;
        self.bump();
        let cmp = match op {
            "=" => Cmp::Eq,
            "<>" => Cmp::Ne,
            "<" => Cmp::Lt,
            "<=" => Cmp::Le,
            ">" => Cmp::Gt,
            _ => Cmp::Ge,
        };
        let right = self.operand()?;
        Ok(Expr::Compare(cmp, Box::new(left), Box::new(right)))
    }

    /// After `IS`.
    fn is_null(&mut self, left: Expr) -> Result<Expr, FilterError> {
        self.node()?;
        let negated = self.keyword("NOT");
        if !self.keyword("NULL") {
            return Err(self.unexpected("NULL"));
        }
        Ok(Expr::IsNull(Box::new(left), negated))
    }

    /// After `[NOT] BETWEEN`.
    fn between(&mut self, left: Expr, negated: bool) -> Result<Expr, FilterError> {
        self.node()?;
        let low = self.operand()?;
        if !self.keyword("AND") {
            return Err(self.unexpected("AND"));
        }
        let high = self.operand()?;
        Ok(Expr::Between(
            Box::new(left),
            Box::new(low),
            Box::new(high),
            negated,
        ))
    }

    /// After `[NOT] IN`.
    fn in_list(&mut self, left: Expr, negated: bool) -> Result<Expr, FilterError> {
        self.node()?;
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
        Ok(Expr::In(Box::new(left), values, negated))
    }

    fn literal(&mut self) -> Result<Value, FilterError> {
        self.node()?;
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
                self.enter(self.position())?;
                self.bump();
                let e = self.expr();
                self.nesting -= 1;
                let e = e?;
                if *self.peek() != Tok::RParen {
                    return Err(self.unexpected("')'"));
                }
                self.bump();
                Ok(e)
            }
            Tok::Ident(name) => {
                self.node()?;
                self.bump();
                Ok(Expr::Property(name))
            }
            Tok::Str(_) | Tok::Num(_) | Tok::Keyword("TRUE" | "FALSE" | "NULL") => {
                self.literal().map(Expr::Literal)
            }
            _ => Err(self.unexpected("a property, a literal or '('")),
        }
    }
}

/// Parses a whole expression.
pub fn parse(input: &str) -> Result<Expr, FilterError> {
    super::check_length("SQL", input)?;
    let mut p = Parser {
        toks: tokenize(input)?,
        at: 0,
        nesting: 0,
        nodes: 0,
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

/// Three-valued AND (`decisive` false) or OR (`decisive` true) of `terms`:
/// the decisive value if any term has it, else its opposite if every term is a
/// boolean, else UNKNOWN.
fn decide(terms: &[Expr], lookup: &dyn Fn(&str) -> Option<String>, decisive: bool) -> Value {
    let mut all_boolean = true;
    for term in terms {
        match term.eval(lookup) {
            Value::Bool(b) if b == decisive => return Value::Bool(decisive),
            Value::Bool(_) => {}
            _ => all_boolean = false,
        }
    }
    if all_boolean {
        Value::Bool(!decisive)
    } else {
        Value::Null
    }
}

impl Expr {
    /// Evaluates with `lookup` giving a property's text (None: missing).
    pub fn eval(&self, lookup: &dyn Fn(&str) -> Option<String>) -> Value {
        match self {
            Expr::Literal(v) => v.clone(),
            Expr::Property(name) => lookup(name).map_or(Value::Null, typed),
            Expr::Not(e) => not(e.eval(lookup)),
            // FALSE if any term is, else TRUE if all are, else UNKNOWN.
            Expr::And(terms) => decide(terms, lookup, false),
            // TRUE if any term is, else FALSE if all are, else UNKNOWN.
            Expr::Or(terms) => decide(terms, lookup, true),
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
