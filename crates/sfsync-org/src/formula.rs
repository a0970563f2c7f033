//! A tiny formula language for calculated fields: field references, number/string/NULL/TRUE/FALSE
//! literals, `+ - * /`, string concatenation `&`, comparisons `= == <> != < <= > >=` and the
//! functions `IF`, `ISBLANK`, `BLANKVALUE`, `AND`, `OR`, `NOT`, `TEXT`. Formulas are parsed once
//! (field names resolved to positions) and evaluated on read; evaluation never panics — division
//! by zero and type mismatches yield null.

use std::sync::Arc;

use crate::value::Val;
use crate::ObjectDef;

/// A parsed formula expression with field references resolved to field positions.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    Lit(Val),
    Field(usize),
    Neg(Box<Expr>),
    Bin(Op, Box<Expr>, Box<Expr>),
    If(Box<Expr>, Box<Expr>, Box<Expr>),
    IsBlank(Box<Expr>),
    BlankValue(Box<Expr>, Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Text(Box<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Concat,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Str(String),
    Ident(String),
    Sym(&'static str),
}

fn lex(text: &str) -> Result<Vec<(Tok, usize)>, String> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            let s = i;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                i += 1;
            }
            let n = text[s..i]
                .parse::<f64>()
                .map_err(|_| format!("bad number '{}' at offset {s}", &text[s..i]))?;
            out.push((Tok::Num(n), s));
        } else if c == b'"' || c == b'\'' {
            let s = i;
            i += 1;
            let mut v = String::new();
            loop {
                let Some(ch) = text[i..].chars().next() else {
                    return Err(format!("unterminated string starting at offset {s}"));
                };
                i += ch.len_utf8();
                if ch as u32 == c as u32 {
                    break;
                }
                if ch == '\\' {
                    let Some(e) = text[i..].chars().next() else {
                        return Err(format!("unterminated string starting at offset {s}"));
                    };
                    i += e.len_utf8();
                    v.push(match e {
                        'n' => '\n',
                        't' => '\t',
                        other => other,
                    });
                } else {
                    v.push(ch);
                }
            }
            out.push((Tok::Str(v), s));
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let s = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push((Tok::Ident(text[s..i].to_string()), s));
        } else {
            let two = text.get(i..i + 2).unwrap_or("");
            let sym: &'static str = match two {
                "==" => "==",
                "!=" => "!=",
                "<>" => "<>",
                "<=" => "<=",
                ">=" => ">=",
                "&&" => "&&",
                "||" => "||",
                _ => match c {
                    b'+' => "+",
                    b'-' => "-",
                    b'*' => "*",
                    b'/' => "/",
                    b'&' => "&",
                    b'=' => "=",
                    b'<' => "<",
                    b'>' => ">",
                    b'(' => "(",
                    b')' => ")",
                    b',' => ",",
                    _ => {
                        return Err(format!(
                            "unexpected character '{}' at offset {i}",
                            text[i..].chars().next().unwrap_or('?')
                        ))
                    }
                },
            };
            out.push((Tok::Sym(sym), i));
            i += sym.len();
        }
    }
    Ok(out)
}

struct Parser<'a> {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    object: &'a ObjectDef,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.0)
    }

    fn at(&self) -> String {
        match self.toks.get(self.pos) {
            Some((_, o)) => format!("offset {o}"),
            None => "end of formula".to_string(),
        }
    }

    fn eat(&mut self, sym: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Sym(s)) if *s == sym) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, sym: &str) -> Result<(), String> {
        if self.eat(sym) {
            Ok(())
        } else {
            Err(format!("expected '{sym}' at {}", self.at()))
        }
    }

    fn expr(&mut self) -> Result<Expr, String> {
        self.depth += 1;
        if self.depth > 64 {
            return Err("formula nested too deeply".into());
        }
        let r = self.logical();
        self.depth -= 1;
        r
    }

    fn logical(&mut self) -> Result<Expr, String> {
        let mut l = self.comparison()?;
        loop {
            if self.eat("&&") {
                l = Expr::And(vec![l, self.comparison()?]);
            } else if self.eat("||") {
                l = Expr::Or(vec![l, self.comparison()?]);
            } else {
                return Ok(l);
            }
        }
    }

    fn comparison(&mut self) -> Result<Expr, String> {
        let l = self.additive()?;
        let op = match self.peek() {
            Some(Tok::Sym("=" | "==")) => Op::Eq,
            Some(Tok::Sym("<>" | "!=")) => Op::Ne,
            Some(Tok::Sym("<")) => Op::Lt,
            Some(Tok::Sym("<=")) => Op::Le,
            Some(Tok::Sym(">")) => Op::Gt,
            Some(Tok::Sym(">=")) => Op::Ge,
            _ => return Ok(l),
        };
        self.pos += 1;
        let r = self.additive()?;
        Ok(Expr::Bin(op, Box::new(l), Box::new(r)))
    }

    fn additive(&mut self) -> Result<Expr, String> {
        let mut l = self.term()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Sym("+")) => Op::Add,
                Some(Tok::Sym("-")) => Op::Sub,
                Some(Tok::Sym("&")) => Op::Concat,
                _ => return Ok(l),
            };
            self.pos += 1;
            l = Expr::Bin(op, Box::new(l), Box::new(self.term()?));
        }
    }

    fn term(&mut self) -> Result<Expr, String> {
        let mut l = self.unary()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Sym("*")) => Op::Mul,
                Some(Tok::Sym("/")) => Op::Div,
                _ => return Ok(l),
            };
            self.pos += 1;
            l = Expr::Bin(op, Box::new(l), Box::new(self.unary()?));
        }
    }

    fn unary(&mut self) -> Result<Expr, String> {
        if self.eat("-") {
            return Ok(Expr::Neg(Box::new(self.unary()?)));
        }
        self.primary()
    }

    fn args(&mut self) -> Result<Vec<Expr>, String> {
        self.expect("(")?;
        let mut a = Vec::new();
        if self.eat(")") {
            return Ok(a);
        }
        loop {
            a.push(self.expr()?);
            if self.eat(")") {
                return Ok(a);
            }
            self.expect(",")?;
        }
    }

    fn primary(&mut self) -> Result<Expr, String> {
        let at = self.at();
        let Some((tok, _)) = self.toks.get(self.pos).cloned() else {
            return Err("unexpected end of formula".into());
        };
        self.pos += 1;
        match tok {
            Tok::Num(n) => Ok(Expr::Lit(Val::Num(n))),
            Tok::Str(s) => Ok(Expr::Lit(Val::Str(Arc::from(s.as_str())))),
            Tok::Sym("(") => {
                let e = self.expr()?;
                self.expect(")")?;
                Ok(e)
            }
            Tok::Sym(s) => Err(format!("unexpected '{s}' at {at}")),
            Tok::Ident(name) => {
                let upper = name.to_ascii_uppercase();
                let is_call = matches!(self.peek(), Some(Tok::Sym("(")));
                if !is_call {
                    match upper.as_str() {
                        "NULL" => return Ok(Expr::Lit(Val::Null)),
                        "TRUE" => return Ok(Expr::Lit(Val::Bool(true))),
                        "FALSE" => return Ok(Expr::Lit(Val::Bool(false))),
                        _ => {}
                    }
                    let idx = self
                        .object
                        .field_index(&name)
                        .ok_or_else(|| format!("unknown field '{name}' at {at}"))?;
                    if self.object.fields[idx].formula.is_some() {
                        return Err(format!("formula refers to formula field '{name}'"));
                    }
                    return Ok(Expr::Field(idx));
                }
                let mut a = self.args()?;
                let arity = |n: usize, a: &Vec<Expr>| {
                    if a.len() == n {
                        Ok(())
                    } else {
                        Err(format!(
                            "{upper} takes {n} argument(s), got {} at {at}",
                            a.len()
                        ))
                    }
                };
                match upper.as_str() {
                    "IF" => {
                        arity(3, &a)?;
                        let e = a.pop().unwrap_or(Expr::Lit(Val::Null));
                        let t = a.pop().unwrap_or(Expr::Lit(Val::Null));
                        let c = a.pop().unwrap_or(Expr::Lit(Val::Null));
                        Ok(Expr::If(Box::new(c), Box::new(t), Box::new(e)))
                    }
                    "ISBLANK" | "ISNULL" => {
                        arity(1, &a)?;
                        Ok(Expr::IsBlank(Box::new(a.remove(0))))
                    }
                    "BLANKVALUE" | "NULLVALUE" => {
                        arity(2, &a)?;
                        let d = a.pop().unwrap_or(Expr::Lit(Val::Null));
                        Ok(Expr::BlankValue(Box::new(a.remove(0)), Box::new(d)))
                    }
                    "NOT" => {
                        arity(1, &a)?;
                        Ok(Expr::Not(Box::new(a.remove(0))))
                    }
                    "TEXT" => {
                        arity(1, &a)?;
                        Ok(Expr::Text(Box::new(a.remove(0))))
                    }
                    "AND" if !a.is_empty() => Ok(Expr::And(a)),
                    "OR" if !a.is_empty() => Ok(Expr::Or(a)),
                    _ => Err(format!("unknown function {upper} at {at}")),
                }
            }
        }
    }
}

/// Parses formula `text` for fields of `object`.
pub(crate) fn parse(text: &str, object: &ObjectDef) -> Result<Expr, String> {
    let mut p = Parser {
        toks: lex(text)?,
        pos: 0,
        object,
        depth: 0,
    };
    let e = p.expr()?;
    if p.pos != p.toks.len() {
        return Err(format!("unexpected input at {}", p.at()));
    }
    Ok(e)
}

fn truthy(v: &Val) -> bool {
    matches!(v, Val::Bool(true))
}

fn blank(v: &Val) -> bool {
    match v {
        Val::Null => true,
        Val::Str(s) => s.is_empty(),
        _ => false,
    }
}

fn text(v: &Val) -> String {
    match v {
        Val::Null => String::new(),
        Val::Num(f) => format!("{f}"),
        other => match other.to_json() {
            serde_json::Value::String(s) => s,
            j => j.to_string(),
        },
    }
}

fn compare(a: &Val, b: &Val) -> Option<std::cmp::Ordering> {
    if let (Some(x), Some(y)) = (a.as_f64(), b.as_f64()) {
        return x.partial_cmp(&y);
    }
    match (a, b) {
        (Val::Null, Val::Null) => Some(std::cmp::Ordering::Equal),
        (Val::Null, _) | (_, Val::Null) => None,
        (Val::Bool(x), Val::Bool(y)) => Some(x.cmp(y)),
        (Val::Date(x), Val::Date(y)) => Some(x.cmp(y)),
        (Val::DateTime(x), Val::DateTime(y)) => Some(x.cmp(y)),
        _ => Some(text(a).cmp(&text(b))),
    }
}

/// Evaluates `e` against a record's stored values (`vals[i]` is field `i`; missing = null).
pub(crate) fn eval(e: &Expr, vals: &[Val]) -> Val {
    match e {
        Expr::Lit(v) => v.clone(),
        Expr::Field(i) => vals.get(*i).cloned().unwrap_or(Val::Null),
        Expr::Neg(x) => match eval(x, vals).as_f64() {
            Some(f) => Val::Num(-f),
            None => Val::Null,
        },
        Expr::If(c, t, f) => {
            if truthy(&eval(c, vals)) {
                eval(t, vals)
            } else {
                eval(f, vals)
            }
        }
        Expr::IsBlank(x) => Val::Bool(blank(&eval(x, vals))),
        Expr::BlankValue(x, d) => {
            let v = eval(x, vals);
            if blank(&v) {
                eval(d, vals)
            } else {
                v
            }
        }
        Expr::And(xs) => Val::Bool(xs.iter().all(|x| truthy(&eval(x, vals)))),
        Expr::Or(xs) => Val::Bool(xs.iter().any(|x| truthy(&eval(x, vals)))),
        Expr::Not(x) => Val::Bool(!truthy(&eval(x, vals))),
        Expr::Text(x) => Val::Str(Arc::from(text(&eval(x, vals)).as_str())),
        Expr::Bin(op, l, r) => {
            let a = eval(l, vals);
            let b = eval(r, vals);
            match op {
                Op::Concat => Val::Str(Arc::from(format!("{}{}", text(&a), text(&b)).as_str())),
                Op::Add | Op::Sub | Op::Mul | Op::Div => {
                    if *op == Op::Add {
                        if let (Val::Str(_), _) | (_, Val::Str(_)) = (&a, &b) {
                            return Val::Str(Arc::from(
                                format!("{}{}", text(&a), text(&b)).as_str(),
                            ));
                        }
                    }
                    let (Some(x), Some(y)) = (a.as_f64(), b.as_f64()) else {
                        return Val::Null;
                    };
                    let v = match op {
                        Op::Add => x + y,
                        Op::Sub => x - y,
                        Op::Mul => x * y,
                        _ => {
                            if y == 0.0 {
                                return Val::Null;
                            }
                            x / y
                        }
                    };
                    if v.is_finite() {
                        Val::Num(v)
                    } else {
                        Val::Null
                    }
                }
                _ => {
                    let ord = compare(&a, &b);
                    use std::cmp::Ordering::*;
                    Val::Bool(match (op, ord) {
                        (_, None) => *op == Op::Ne,
                        (Op::Eq, Some(o)) => o == Equal,
                        (Op::Ne, Some(o)) => o != Equal,
                        (Op::Lt, Some(o)) => o == Less,
                        (Op::Le, Some(o)) => o != Greater,
                        (Op::Gt, Some(o)) => o == Greater,
                        (_, Some(o)) => o != Less,
                    })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Schema;

    #[test]
    fn revenue_per_employee() {
        let s = Schema::standard();
        let acc = s.object("Account").unwrap();
        let f = acc.field("Revenue_Per_Employee__c").unwrap();
        let e = parse(&f.formula.as_ref().unwrap().text, acc).unwrap();
        let mut vals = vec![Val::Null; acc.fields.len()];
        assert_eq!(eval(&e, &vals), Val::Null);
        vals[acc.field_index("AnnualRevenue").unwrap()] = Val::Num(1000.0);
        vals[acc.field_index("NumberOfEmployees").unwrap()] = Val::Int(0);
        assert_eq!(eval(&e, &vals), Val::Null);
        vals[acc.field_index("NumberOfEmployees").unwrap()] = Val::Int(8);
        assert_eq!(eval(&e, &vals), Val::Num(125.0));
    }

    #[test]
    fn concat_and_errors() {
        let s = Schema::standard();
        let c = s.object("Contact").unwrap();
        let e = parse("FirstName & \" \" & LastName", c).unwrap();
        let mut vals = vec![Val::Null; c.fields.len()];
        vals[c.field_index("FirstName").unwrap()] = Val::str("Ada");
        vals[c.field_index("LastName").unwrap()] = Val::str("Lovelace");
        assert_eq!(eval(&e, &vals), Val::str("Ada Lovelace"));
        assert!(parse("Nope__c + 1", c).unwrap_err().contains("Nope__c"));
        assert!(parse("IF(1, 2)", c).is_err());
        assert!(parse("1 +", c).is_err());
        assert!(parse("\"abc", c).is_err());
        assert!(parse(&"(".repeat(500), c).is_err());
    }
}
