//! OData 4.0 system query options — `$filter`, `$orderby`, `$select` — parsed into the store's
//! [`RowFilter`] / [`OrderKey`]s over an entity type's properties.
//!
//! Guarantees: pure (no I/O); a literal never becomes SQL text (it becomes a typed
//! [`Value`] that the store binds as a parameter); every error names the option, the 1-based
//! character position and the token at fault (`$filter: position 12: unknown property
//! 'Nmae'`). Supported: `eq ne gt ge lt le`, `and or not`, parentheses, `startswith(P, 'x')`,
//! `contains(P, 'x')` (alone, or compared with `true`/`false`), a bare Boolean property;
//! literals: strings (`'O''Brien'`), integers, decimals (`1.5`, `2e3`, `1.5M`), `true`,
//! `false`, `null`, dates (`2026-11-21`) and date-times with an offset
//! (`2026-11-21T09:30:00Z`). PII properties are refused for callers not allowed to see them
//! (and for everyone where the store cannot compare a sealed value).

use sfsync_store::{CmpOp, ColumnType, Operand, OrderKey, RowFilter, StrFn, Value};

/// An EDM primitive type of a property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edm {
    String,
    Int64,
    Decimal,
    Boolean,
    Date,
    DateTimeOffset,
}

impl Edm {
    pub fn of(ty: ColumnType) -> Edm {
        match ty {
            ColumnType::Text => Edm::String,
            ColumnType::Integer => Edm::Int64,
            ColumnType::Real => Edm::Decimal,
            ColumnType::Boolean => Edm::Boolean,
            ColumnType::Date => Edm::Date,
            ColumnType::Timestamp => Edm::DateTimeOffset,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Edm::String => "Edm.String",
            Edm::Int64 => "Edm.Int64",
            Edm::Decimal => "Edm.Decimal",
            Edm::Boolean => "Edm.Boolean",
            Edm::Date => "Edm.Date",
            Edm::DateTimeOffset => "Edm.DateTimeOffset",
        }
    }
}

/// A property of an entity type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prop {
    /// The OData name (the Salesforce field API name: `BillingCity`).
    pub name: String,
    /// The store column (`billingcity`).
    pub column: String,
    pub edm: Edm,
    /// Declared PII: shown and filterable only for callers allowed PII.
    pub pii: bool,
    /// Stored sealed: the store cannot compare or sort it.
    pub sealed: bool,
}

/// What a query option may touch.
pub struct Scope<'a> {
    pub props: &'a [Prop],
    /// The caller may see PII.
    pub pii: bool,
}

impl Scope<'_> {
    /// A property by name (exact, then case-insensitive).
    pub fn prop(&self, name: &str) -> Option<&Prop> {
        self.props.iter().find(|p| p.name == name).or_else(|| {
            self.props
                .iter()
                .find(|p| p.name.eq_ignore_ascii_case(name))
        })
    }

    fn usable(
        &self,
        option: &str,
        pos: usize,
        name: &str,
        use_: &str,
    ) -> Result<&Prop, QueryError> {
        let p = self
            .prop(name)
            .ok_or_else(|| QueryError::new(option, pos, format!("unknown property '{name}'")))?;
        if p.pii && !self.pii {
            return Err(QueryError::new(
                option,
                pos,
                format!(
                    "property '{}' is PII and this caller is not authorised for PII: it cannot be used in {use_}",
                    p.name
                ),
            ));
        }
        if p.sealed {
            return Err(QueryError::new(
                option,
                pos,
                format!(
                    "property '{}' is PII, stored encrypted: it cannot be used in {use_}",
                    p.name
                ),
            ));
        }
        Ok(p)
    }
}

/// A query option the service refuses: answered 400 with this message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError {
    pub option: String,
    /// 1-based character position in the option's value (0: the whole option).
    pub pos: usize,
    pub reason: String,
}

impl QueryError {
    pub fn new(option: &str, pos: usize, reason: impl Into<String>) -> QueryError {
        QueryError {
            option: option.to_string(),
            pos,
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.pos == 0 {
            write!(f, "{}: {}", self.option, self.reason)
        } else {
            write!(f, "{}: position {}: {}", self.option, self.pos, self.reason)
        }
    }
}

// ---- lexer ----

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Int(i64),
    Dec(f64),
    Date(i32),
    DateTime(i64),
    LParen,
    RParen,
    Comma,
}

impl Tok {
    fn show(&self) -> String {
        match self {
            Tok::Ident(s) => format!("'{s}'"),
            Tok::Str(s) => format!("string '{s}'"),
            Tok::Int(i) => format!("number {i}"),
            Tok::Dec(f) => format!("number {f}"),
            Tok::Date(_) | Tok::DateTime(_) => "a date literal".into(),
            Tok::LParen => "'('".into(),
            Tok::RParen => "')'".into(),
            Tok::Comma => "','".into(),
        }
    }
}

/// Tokens with their 1-based positions.
fn lex(option: &str, s: &str) -> Result<Vec<(usize, Tok)>, QueryError> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let pos = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        match c {
            '(' => {
                out.push((pos, Tok::LParen));
                i += 1;
            }
            ')' => {
                out.push((pos, Tok::RParen));
                i += 1;
            }
            ',' => {
                out.push((pos, Tok::Comma));
                i += 1;
            }
            '\'' => {
                let mut v = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => {
                            return Err(QueryError::new(
                                option,
                                pos,
                                "the string literal is not closed (a quote inside a string is written '')",
                            ))
                        }
                        Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                            v.push('\'');
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(ch) => {
                            v.push(*ch);
                            i += 1;
                        }
                    }
                }
                out.push((pos, Tok::Str(v)));
            }
            c if c.is_ascii_digit()
                || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) =>
            {
                let start = i;
                i += 1;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || ":.+-".contains(chars[i]))
                {
                    // A '+'/'-' continues the token only after an exponent or inside a
                    // date-time (offset).
                    if (chars[i] == '+' || chars[i] == '-')
                        && !matches!(chars[i - 1], 'e' | 'E')
                        && !chars[start..i].contains(&'T')
                        && !(chars[i] == '-' && i - start <= 7 && chars[start].is_ascii_digit())
                    {
                        break;
                    }
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                out.push((pos, number_or_date(option, pos, &text)?));
            }
            c if c.is_alphabetic() || c == '_' || c == '$' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$')
                {
                    i += 1;
                }
                out.push((pos, Tok::Ident(chars[start..i].iter().collect())));
            }
            other => {
                return Err(QueryError::new(
                    option,
                    pos,
                    format!("unexpected character '{other}'"),
                ))
            }
        }
    }
    Ok(out)
}

fn number_or_date(option: &str, pos: usize, text: &str) -> Result<Tok, QueryError> {
    if let Ok(d) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("the epoch is a date");
        return Ok(Tok::Date((d - epoch).num_days() as i32));
    }
    if text.contains('T') {
        return chrono::DateTime::parse_from_rfc3339(text)
            .map(|t| Tok::DateTime(t.timestamp_millis()))
            .map_err(|_| {
                QueryError::new(
                    option,
                    pos,
                    format!("'{text}' is not a date-time (write e.g. 2026-11-21T09:30:00Z)"),
                )
            });
    }
    let bare = text.trim_end_matches(['m', 'M', 'd', 'D', 'f', 'F', 'l', 'L']);
    if let Ok(i) = bare.parse::<i64>() {
        if bare.len() == text.len() || text.ends_with(['l', 'L']) {
            return Ok(Tok::Int(i));
        }
    }
    bare.parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
        .map(Tok::Dec)
        .ok_or_else(|| QueryError::new(option, pos, format!("'{text}' is not a number or date")))
}

// ---- parser ----

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Cmp(Box<Expr>, CmpOp, Box<Expr>, usize),
    Func(String, Vec<Expr>, usize),
    Prop(String, usize),
    Lit(Value, usize),
}

struct Parser<'a> {
    option: &'a str,
    toks: Vec<(usize, Tok)>,
    i: usize,
    end: usize,
    depth: usize,
}

/// Deepest nesting accepted (a guard against stack exhaustion).
const MAX_DEPTH: usize = 64;

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.i).map(|(_, t)| t)
    }

    fn pos(&self) -> usize {
        self.toks.get(self.i).map_or(self.end, |(p, _)| *p)
    }

    fn err(&self, reason: impl Into<String>) -> QueryError {
        QueryError::new(self.option, self.pos(), reason)
    }

    fn keyword(&self) -> Option<&str> {
        match self.peek() {
            Some(Tok::Ident(s)) => Some(s.as_str()),
            _ => None,
        }
    }

    fn expr(&mut self) -> Result<Expr, QueryError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err(format!(
                "the expression nests deeper than {MAX_DEPTH} levels"
            )));
        }
        let mut left = self.and()?;
        while self.keyword() == Some("or") {
            self.i += 1;
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        self.depth -= 1;
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, QueryError> {
        let mut left = self.unary()?;
        while self.keyword() == Some("and") {
            self.i += 1;
            let right = self.unary()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, QueryError> {
        if self.keyword() == Some("not") {
            self.i += 1;
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(self.err(format!(
                    "the expression nests deeper than {MAX_DEPTH} levels"
                )));
            }
            let e = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(e)));
        }
        self.cmp()
    }

    fn cmp(&mut self) -> Result<Expr, QueryError> {
        let left = self.primary()?;
        let op = match self.keyword() {
            Some("eq") => CmpOp::Eq,
            Some("ne") => CmpOp::Ne,
            Some("gt") => CmpOp::Gt,
            Some("ge") => CmpOp::Ge,
            Some("lt") => CmpOp::Lt,
            Some("le") => CmpOp::Le,
            _ => return Ok(left),
        };
        let at = self.pos();
        self.i += 1;
        let right = self.primary()?;
        Ok(Expr::Cmp(Box::new(left), op, Box::new(right), at))
    }

    fn primary(&mut self) -> Result<Expr, QueryError> {
        let pos = self.pos();
        let Some(tok) = self.peek().cloned() else {
            return Err(self.err("the expression ends early: expected a property, literal or '('"));
        };
        self.i += 1;
        Ok(match tok {
            Tok::LParen => {
                let e = self.expr()?;
                if self.peek() != Some(&Tok::RParen) {
                    return Err(self.err(format!(
                        "expected ')' to close the '(' at position {pos}, found {}",
                        self.peek().map_or("the end".into(), Tok::show)
                    )));
                }
                self.i += 1;
                e
            }
            Tok::Str(s) => Expr::Lit(Value::Text(s), pos),
            Tok::Int(i) => Expr::Lit(Value::Int(i), pos),
            Tok::Dec(f) => Expr::Lit(Value::Real(f), pos),
            Tok::Date(d) => Expr::Lit(Value::Date(d), pos),
            Tok::DateTime(ms) => Expr::Lit(Value::Timestamp(ms), pos),
            Tok::Ident(name) => match name.as_str() {
                "true" => Expr::Lit(Value::Bool(true), pos),
                "false" => Expr::Lit(Value::Bool(false), pos),
                "null" => Expr::Lit(Value::Null, pos),
                "and" | "or" | "not" | "eq" | "ne" | "gt" | "ge" | "lt" | "le" => {
                    return Err(QueryError::new(
                        self.option,
                        pos,
                        format!("unexpected '{name}': expected a property, literal or '('"),
                    ))
                }
                _ if self.peek() == Some(&Tok::LParen) => {
                    self.i += 1;
                    let mut args = Vec::new();
                    if self.peek() != Some(&Tok::RParen) {
                        loop {
                            args.push(self.expr()?);
                            match self.peek() {
                                Some(Tok::Comma) => self.i += 1,
                                Some(Tok::RParen) => break,
                                other => {
                                    return Err(self.err(format!(
                                        "expected ',' or ')' in the arguments of {name}, found {}",
                                        other.map_or("the end".into(), Tok::show)
                                    )))
                                }
                            }
                        }
                    }
                    self.i += 1;
                    Expr::Func(name, args, pos)
                }
                _ => Expr::Prop(name, pos),
            },
            other => {
                return Err(QueryError::new(
                    self.option,
                    pos,
                    format!(
                        "unexpected {}: expected a property, literal or '('",
                        other.show()
                    ),
                ))
            }
        })
    }
}

fn parse_expr(option: &str, text: &str) -> Result<Expr, QueryError> {
    let toks = lex(option, text)?;
    if toks.is_empty() {
        return Err(QueryError::new(option, 0, "is empty"));
    }
    let mut p = Parser {
        option,
        end: text.chars().count() + 1,
        toks,
        i: 0,
        depth: 0,
    };
    let e = p.expr()?;
    if let Some(t) = p.peek() {
        return Err(p.err(format!(
            "unexpected {} after a complete expression (missing 'and'/'or'?)",
            t.show()
        )));
    }
    Ok(e)
}

// ---- binding to the entity type ----

const F: &str = "$filter";

/// A literal as a value of a property of type `edm`.
fn coerce(prop: &Prop, v: &Value, pos: usize) -> Result<Value, QueryError> {
    let bad = |what: &str| {
        QueryError::new(
            F,
            pos,
            format!(
                "{what} cannot be compared with '{}' ({})",
                prop.name,
                prop.edm.name()
            ),
        )
    };
    Ok(match (prop.edm, v) {
        (_, Value::Null) => Value::Null,
        (Edm::String, Value::Text(s)) => Value::Text(s.clone()),
        (Edm::Int64, Value::Int(i)) => Value::Int(*i),
        (Edm::Int64, Value::Real(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
            Value::Int(*f as i64)
        }
        (Edm::Decimal, Value::Int(i)) => Value::Real(*i as f64),
        (Edm::Decimal, Value::Real(f)) => Value::Real(*f),
        (Edm::Boolean, Value::Bool(b)) => Value::Bool(*b),
        (Edm::Date, Value::Date(d)) => Value::Date(*d),
        (Edm::DateTimeOffset, Value::Timestamp(ms)) => Value::Timestamp(*ms),
        (Edm::DateTimeOffset, Value::Date(d)) => Value::Timestamp(i64::from(*d) * 86_400_000),
        (_, Value::Text(_)) => return Err(bad("a string")),
        (_, Value::Int(_) | Value::Real(_)) => return Err(bad("a number")),
        (_, Value::Bool(_)) => return Err(bad("a Boolean")),
        (_, Value::Date(_) | Value::Timestamp(_)) => return Err(bad("a date")),
    })
}

fn bind(scope: &Scope<'_>, e: &Expr) -> Result<RowFilter, QueryError> {
    Ok(match e {
        Expr::And(a, b) => RowFilter::And(Box::new(bind(scope, a)?), Box::new(bind(scope, b)?)),
        Expr::Or(a, b) => RowFilter::Or(Box::new(bind(scope, a)?), Box::new(bind(scope, b)?)),
        Expr::Not(a) => RowFilter::Not(Box::new(bind(scope, a)?)),
        Expr::Func(..) => func(scope, e)?,
        Expr::Prop(name, pos) => {
            let p = scope.usable(F, *pos, name, "$filter")?;
            if p.edm != Edm::Boolean {
                return Err(QueryError::new(
                    F,
                    *pos,
                    format!(
                        "'{}' is {}, not a condition: compare it (e.g. {} eq …)",
                        p.name,
                        p.edm.name(),
                        p.name
                    ),
                ));
            }
            RowFilter::eq(&p.column, Value::Bool(true))
        }
        Expr::Lit(v, pos) => {
            return Err(QueryError::new(
                F,
                *pos,
                format!("a literal ({v:?}) alone is not a condition"),
            ))
        }
        Expr::Cmp(l, op, r, at) => cmp(scope, l, *op, r, *at)?,
    })
}

fn func(scope: &Scope<'_>, e: &Expr) -> Result<RowFilter, QueryError> {
    let Expr::Func(name, args, pos) = e else {
        unreachable!("func is called with a function");
    };
    let f = match name.as_str() {
        "startswith" => StrFn::StartsWith,
        "contains" => StrFn::Contains,
        other => {
            return Err(QueryError::new(
                F,
                *pos,
                format!("unsupported function '{other}' (supported: startswith, contains)"),
            ))
        }
    };
    let [Expr::Prop(prop, ppos), Expr::Lit(Value::Text(value), _)] = args.as_slice() else {
        return Err(QueryError::new(
            F,
            *pos,
            format!("{name} takes a string property and a string literal: {name}(Name, 'abc')"),
        ));
    };
    let p = scope.usable(F, *ppos, prop, "$filter")?;
    if p.edm != Edm::String {
        return Err(QueryError::new(
            F,
            *ppos,
            format!(
                "{name} needs a string property; '{}' is {}",
                p.name,
                p.edm.name()
            ),
        ));
    }
    Ok(RowFilter::Str {
        func: f,
        column: p.column.clone(),
        value: value.clone(),
    })
}

fn cmp(
    scope: &Scope<'_>,
    l: &Expr,
    op: CmpOp,
    r: &Expr,
    at: usize,
) -> Result<RowFilter, QueryError> {
    // `startswith(…) eq true`
    if let (Expr::Func(..), Expr::Lit(Value::Bool(b), _))
    | (Expr::Lit(Value::Bool(b), _), Expr::Func(..)) = (l, r)
    {
        let f = func(scope, if matches!(l, Expr::Func(..)) { l } else { r })?;
        return match (op, b) {
            (CmpOp::Eq, true) | (CmpOp::Ne, false) => Ok(f),
            (CmpOp::Eq, false) | (CmpOp::Ne, true) => Ok(RowFilter::Not(Box::new(f))),
            _ => Err(QueryError::new(
                F,
                at,
                "a function result can only be compared with eq/ne",
            )),
        };
    }
    let side = |e: &Expr| -> Result<(Operand, Option<Prop>), QueryError> {
        match e {
            Expr::Prop(name, pos) => {
                let p = scope.usable(F, *pos, name, "$filter")?;
                Ok((Operand::Column(p.column.clone()), Some(p.clone())))
            }
            Expr::Lit(v, _) => Ok((Operand::Value(v.clone()), None)),
            Expr::Func(_, _, pos) => Err(QueryError::new(
                F,
                *pos,
                "a function can only be used as a condition or compared with true/false",
            )),
            _ => Err(QueryError::new(
                F,
                at,
                "comparison operands must be properties or literals (group conditions with and/or)",
            )),
        }
    };
    let (lo, lp) = side(l)?;
    let (ro, rp) = side(r)?;
    let lit_pos = |e: &Expr| match e {
        Expr::Lit(_, p) => *p,
        _ => at,
    };
    let (left, right) = match (lo, lp, ro, rp) {
        (Operand::Column(c), Some(p), Operand::Value(v), None) => (
            Operand::Column(c),
            Operand::Value(coerce(&p, &v, lit_pos(r))?),
        ),
        (Operand::Value(v), None, Operand::Column(c), Some(p)) => (
            Operand::Value(coerce(&p, &v, lit_pos(l))?),
            Operand::Column(c),
        ),
        (Operand::Column(a), Some(pa), Operand::Column(b), Some(pb)) => {
            let numeric = |e: Edm| matches!(e, Edm::Int64 | Edm::Decimal);
            if pa.edm != pb.edm && !(numeric(pa.edm) && numeric(pb.edm)) {
                return Err(QueryError::new(
                    F,
                    at,
                    format!(
                        "'{}' ({}) and '{}' ({}) cannot be compared",
                        pa.name,
                        pa.edm.name(),
                        pb.name,
                        pb.edm.name()
                    ),
                ));
            }
            (Operand::Column(a), Operand::Column(b))
        }
        _ => {
            return Err(QueryError::new(
                F,
                at,
                "a comparison needs a property on at least one side",
            ))
        }
    };
    if matches!(op, CmpOp::Gt | CmpOp::Ge | CmpOp::Lt | CmpOp::Le)
        && [&left, &right]
            .iter()
            .any(|o| matches!(o, Operand::Value(Value::Bool(_))))
    {
        return Err(QueryError::new(
            F,
            at,
            "Boolean values can only be compared with eq/ne",
        ));
    }
    Ok(RowFilter::Cmp { left, op, right })
}

/// `$filter` as a store filter.
pub fn parse_filter(scope: &Scope<'_>, text: &str) -> Result<RowFilter, QueryError> {
    let e = parse_expr(F, text)?;
    bind(scope, &e)
}

/// Most `$orderby` keys.
pub const MAX_ORDER_KEYS: usize = 8;

/// `$orderby`: `Name desc, Id`.
pub fn parse_orderby(scope: &Scope<'_>, text: &str) -> Result<Vec<OrderKey>, QueryError> {
    const O: &str = "$orderby";
    let mut out = Vec::new();
    let mut offset = 0;
    for part in text.split(',') {
        let pos = offset + part.len() - part.trim_start().len() + 1;
        offset += part.chars().count() + 1;
        let words: Vec<&str> = part.split_whitespace().collect();
        let (name, desc) = match words.as_slice() {
            [name] => (*name, false),
            [name, dir] if dir.eq_ignore_ascii_case("asc") => (*name, false),
            [name, dir] if dir.eq_ignore_ascii_case("desc") => (*name, true),
            [_, dir] => {
                return Err(QueryError::new(
                    O,
                    pos,
                    format!("'{dir}' is not a direction (asc or desc)"),
                ))
            }
            [] => return Err(QueryError::new(O, pos, "an empty sort key")),
            _ => {
                return Err(QueryError::new(
                    O,
                    pos,
                    format!("'{}' is not 'Property [asc|desc]'", part.trim()),
                ))
            }
        };
        let p = scope.usable(O, pos, name, "$orderby")?;
        if out.iter().any(|k: &OrderKey| k.column == p.column) {
            return Err(QueryError::new(
                O,
                pos,
                format!("'{}' is given twice", p.name),
            ));
        }
        out.push(OrderKey {
            column: p.column.clone(),
            desc,
        });
    }
    if out.len() > MAX_ORDER_KEYS {
        return Err(QueryError::new(
            O,
            0,
            format!("at most {MAX_ORDER_KEYS} sort keys"),
        ));
    }
    Ok(out)
}

/// `$select`: the properties (in entity-type order), `None` for all (`*` or absent).
pub fn parse_select<'a>(
    scope: &Scope<'a>,
    text: &str,
) -> Result<Option<Vec<&'a Prop>>, QueryError> {
    const S: &str = "$select";
    let mut names = Vec::new();
    let mut offset = 0;
    for part in text.split(',') {
        let pos = offset + part.len() - part.trim_start().len() + 1;
        offset += part.chars().count() + 1;
        let name = part.trim();
        if name == "*" {
            return Ok(None);
        }
        if name.is_empty() {
            return Err(QueryError::new(S, pos, "an empty property name"));
        }
        let p = scope
            .prop(name)
            .ok_or_else(|| QueryError::new(S, pos, format!("unknown property '{name}'")))?;
        names.push(p.name.clone());
    }
    Ok(Some(
        scope
            .props
            .iter()
            .filter(|p| names.contains(&p.name))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props() -> Vec<Prop> {
        let p = |name: &str, edm, pii| Prop {
            name: name.into(),
            column: name.to_lowercase(),
            edm,
            pii,
            sealed: pii,
        };
        vec![
            p("Id", Edm::String, false),
            p("Name", Edm::String, false),
            p("Phone", Edm::String, true),
            p("NumberOfEmployees", Edm::Int64, false),
            p("AnnualRevenue", Edm::Decimal, false),
            p("IsActive__c", Edm::Boolean, false),
            p("Founded__c", Edm::Date, false),
            p("CreatedDate", Edm::DateTimeOffset, false),
        ]
    }

    fn filter(text: &str) -> Result<RowFilter, String> {
        let props = props();
        parse_filter(
            &Scope {
                props: &props,
                pii: false,
            },
            text,
        )
        .map_err(|e| e.to_string())
    }

    fn col(c: &str) -> Operand {
        Operand::Column(c.into())
    }

    fn val(v: Value) -> Operand {
        Operand::Value(v)
    }

    #[test]
    fn every_operator_and_literal_kind() {
        for (op, want) in [
            ("eq", CmpOp::Eq),
            ("ne", CmpOp::Ne),
            ("gt", CmpOp::Gt),
            ("ge", CmpOp::Ge),
            ("lt", CmpOp::Lt),
            ("le", CmpOp::Le),
        ] {
            assert_eq!(
                filter(&format!("NumberOfEmployees {op} 10")).unwrap(),
                RowFilter::Cmp {
                    left: col("numberofemployees"),
                    op: want,
                    right: val(Value::Int(10))
                }
            );
        }
        assert_eq!(
            filter("Name eq 'O''Brien'").unwrap(),
            RowFilter::eq("name", Value::Text("O'Brien".into()))
        );
        assert_eq!(
            filter("AnnualRevenue ge 10").unwrap(),
            RowFilter::Cmp {
                left: col("annualrevenue"),
                op: CmpOp::Ge,
                right: val(Value::Real(10.0))
            },
            "an integer literal becomes the Double property's type"
        );
        assert_eq!(
            filter("AnnualRevenue lt -1.5e3").unwrap(),
            RowFilter::Cmp {
                left: col("annualrevenue"),
                op: CmpOp::Lt,
                right: val(Value::Real(-1500.0))
            }
        );
        assert_eq!(
            filter("IsActive__c eq true").unwrap(),
            RowFilter::eq("isactive__c", Value::Bool(true))
        );
        assert_eq!(
            filter("IsActive__c").unwrap(),
            RowFilter::eq("isactive__c", Value::Bool(true))
        );
        assert_eq!(
            filter("Name eq null").unwrap(),
            RowFilter::eq("name", Value::Null)
        );
        assert_eq!(
            filter("Founded__c eq 1970-01-02").unwrap(),
            RowFilter::eq("founded__c", Value::Date(1))
        );
        assert_eq!(
            filter("CreatedDate gt 2026-11-21T09:30:00+01:00").unwrap(),
            RowFilter::Cmp {
                left: col("createddate"),
                op: CmpOp::Gt,
                right: val(Value::Timestamp(
                    chrono::DateTime::parse_from_rfc3339("2026-11-21T08:30:00Z")
                        .unwrap()
                        .timestamp_millis()
                ))
            }
        );
        assert_eq!(
            filter("10 lt NumberOfEmployees").unwrap(),
            RowFilter::Cmp {
                left: val(Value::Int(10)),
                op: CmpOp::Lt,
                right: col("numberofemployees")
            }
        );
    }

    #[test]
    fn logic_functions_and_precedence() {
        let starts = RowFilter::Str {
            func: StrFn::StartsWith,
            column: "name".into(),
            value: "Ac".into(),
        };
        let contains = RowFilter::Str {
            func: StrFn::Contains,
            column: "name".into(),
            value: "me".into(),
        };
        assert_eq!(filter("startswith(Name,'Ac')").unwrap(), starts);
        assert_eq!(filter("contains(Name, 'me') eq true").unwrap(), contains);
        assert_eq!(
            filter("contains(Name, 'me') eq false").unwrap(),
            RowFilter::Not(Box::new(contains.clone()))
        );
        // and binds tighter than or; not binds tightest.
        let a = RowFilter::eq("name", Value::Text("a".into()));
        let b = RowFilter::eq("name", Value::Text("b".into()));
        let got =
            filter("Name eq 'a' or not startswith(Name,'Ac') and contains(Name,'me')").unwrap();
        assert_eq!(
            got,
            RowFilter::Or(
                Box::new(a.clone()),
                Box::new(RowFilter::And(
                    Box::new(RowFilter::Not(Box::new(starts.clone()))),
                    Box::new(contains.clone())
                ))
            )
        );
        let got = filter("(Name eq 'a' or Name eq 'b') and (contains(Name,'me'))").unwrap();
        assert_eq!(
            got,
            RowFilter::And(
                Box::new(RowFilter::Or(Box::new(a), Box::new(b))),
                Box::new(contains)
            )
        );
    }

    #[test]
    fn errors_name_the_position_and_token() {
        let cases = [
            (
                "Nmae eq 'x'",
                "$filter: position 1: unknown property 'Nmae'",
            ),
            (
                "Name eq 'x",
                "$filter: position 9: the string literal is not closed",
            ),
            ("Name eq", "$filter: position 8: the expression ends early"),
            (
                "Name eq 'x' Name",
                "$filter: position 13: unexpected 'Name' after a complete expression",
            ),
            (
                "(Name eq 'x'",
                "$filter: position 13: expected ')' to close the '(' at position 1",
            ),
            (
                "Name eq 5",
                "$filter: position 9: a number cannot be compared with 'Name' (Edm.String)",
            ),
            (
                "NumberOfEmployees eq 'x'",
                "$filter: position 22: a string cannot be compared",
            ),
            (
                "Phone eq '1'",
                "$filter: position 1: property 'Phone' is PII and this caller is not authorised",
            ),
            (
                "endswith(Name,'x')",
                "$filter: position 1: unsupported function 'endswith'",
            ),
            (
                "Name",
                "$filter: position 1: 'Name' is Edm.String, not a condition",
            ),
            ("Name eq #", "$filter: position 9: unexpected character '#'"),
            (
                "IsActive__c gt true",
                "Boolean values can only be compared with eq/ne",
            ),
            ("'a' eq 'b'", "a comparison needs a property"),
            ("", "$filter: is empty"),
        ];
        for (text, want) in cases {
            let got = filter(text).unwrap_err();
            assert!(
                got.starts_with(want) || got.contains(want),
                "{text}: got {got}, want {want}"
            );
        }
        let deep = format!("{}Name eq 'x'{}", "(".repeat(200), ")".repeat(200));
        assert!(filter(&deep).unwrap_err().contains("nests deeper"));
    }

    #[test]
    fn pii_is_sealed_even_for_authorised_callers() {
        let props = props();
        let scope = Scope {
            props: &props,
            pii: true,
        };
        let e = parse_filter(&scope, "Phone eq '1'")
            .unwrap_err()
            .to_string();
        assert!(e.contains("stored encrypted"), "{e}");
        assert!(parse_orderby(&scope, "Phone")
            .unwrap_err()
            .to_string()
            .contains("stored encrypted"));
    }

    #[test]
    fn orderby_and_select() {
        let props = props();
        let scope = Scope {
            props: &props,
            pii: false,
        };
        assert_eq!(
            parse_orderby(&scope, "Name desc, numberofemployees").unwrap(),
            vec![
                OrderKey {
                    column: "name".into(),
                    desc: true
                },
                OrderKey {
                    column: "numberofemployees".into(),
                    desc: false
                }
            ]
        );
        assert_eq!(
            parse_orderby(&scope, "Name, Name").unwrap_err().to_string(),
            "$orderby: position 7: 'Name' is given twice"
        );
        assert_eq!(
            parse_orderby(&scope, "Name up").unwrap_err().to_string(),
            "$orderby: position 1: 'up' is not a direction (asc or desc)"
        );
        let sel = parse_select(&scope, "Phone,Name").unwrap().unwrap();
        assert_eq!(
            sel.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["Name", "Phone"]
        );
        assert_eq!(parse_select(&scope, "*").unwrap(), None);
        assert_eq!(
            parse_select(&scope, "Name,Bogus").unwrap_err().to_string(),
            "$select: position 6: unknown property 'Bogus'"
        );
    }
}
