//! A reader for protobuf text format (`config.pbtxt`), enough for Triton model configurations:
//! scalar fields, nested messages (`name { ... }`) and lists (`name: [ ... ]`), comments.

/// A value in a text-format message.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A number, identifier (enum value) or string, as written (strings unquoted).
    Scalar(String),
    /// A nested message.
    Message(Vec<(String, Value)>),
    /// A list of values (`[a, b]`).
    List(Vec<Value>),
}

/// Parses a whole text-format message into its fields, in order (a field may repeat).
pub fn parse(text: &str) -> Result<Vec<(String, Value)>, String> {
    let tokens = tokenize(text)?;
    let mut p = Parser { tokens, at: 0 };
    let fields = p.fields(None)?;
    Ok(fields)
}

/// The first field called `name`.
pub fn field<'a>(fields: &'a [(String, Value)], name: &str) -> Option<&'a Value> {
    fields.iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

/// The first field called `name` as a scalar parsed into `T`; an error names the field.
pub fn scalar<T: std::str::FromStr>(
    fields: &[(String, Value)],
    name: &str,
) -> Result<Option<T>, String> {
    match field(fields, name) {
        None => Ok(None),
        Some(Value::Scalar(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| format!("`{name}`: `{s}` is not a valid value")),
        Some(_) => Err(format!("`{name}` must be a single value")),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Str(String),
    Punct(char),
}

fn tokenize(text: &str) -> Result<Vec<(Token, usize)>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    let line_of = |at: usize| text[..at].matches('\n').count() + 1;
    while let Some(&(at, c)) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '#' => while chars.next_if(|&(_, c)| c != '\n').is_some() {},
            ':' | '{' | '}' | '[' | ']' | ',' | ';' | '<' | '>' => {
                chars.next();
                tokens.push((Token::Punct(c), line_of(at)));
            }
            '"' | '\'' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err(format!("line {}: unterminated string", line_of(at))),
                        Some((_, q)) if q == c => break,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => s.push('\n'),
                            Some((_, 't')) => s.push('\t'),
                            Some((_, e)) => s.push(e),
                            None => {
                                return Err(format!("line {}: unterminated string", line_of(at)))
                            }
                        },
                        Some((_, ch)) => s.push(ch),
                    }
                }
                tokens.push((Token::Str(s), line_of(at)));
            }
            c if c.is_alphanumeric() || matches!(c, '_' | '-' | '+' | '.') => {
                let mut s = String::new();
                while let Some((_, ch)) = chars
                    .next_if(|&(_, ch)| ch.is_alphanumeric() || matches!(ch, '_' | '-' | '+' | '.'))
                {
                    s.push(ch);
                }
                tokens.push((Token::Word(s), line_of(at)));
            }
            other => return Err(format!("line {}: unexpected `{other}`", line_of(at))),
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at).map(|(t, _)| t)
    }

    fn line(&self) -> usize {
        self.tokens
            .get(self.at.min(self.tokens.len().saturating_sub(1)))
            .map_or(1, |(_, l)| *l)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).map(|(t, _)| t.clone());
        self.at += 1;
        t
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(&Token::Punct(c)) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    /// Fields up to `close` (or the end of input at the top level).
    fn fields(&mut self, close: Option<char>) -> Result<Vec<(String, Value)>, String> {
        let mut fields = Vec::new();
        loop {
            match (self.peek(), close) {
                (None, None) => return Ok(fields),
                (None, Some(c)) => return Err(format!("line {}: missing `{c}`", self.line())),
                (Some(Token::Punct(p)), Some(c)) if *p == c => {
                    self.at += 1;
                    return Ok(fields);
                }
                _ => {}
            }
            let line = self.line();
            let name = match self.next() {
                Some(Token::Word(w)) => w,
                other => return Err(format!("line {line}: expected a field name, got {other:?}")),
            };
            let colon = self.eat(':');
            let value = self.value(colon)?;
            fields.push((name, value));
            if !self.eat(',') {
                self.eat(';');
            }
        }
    }

    fn value(&mut self, after_colon: bool) -> Result<Value, String> {
        let line = self.line();
        match self.next() {
            Some(Token::Punct('{')) => Ok(Value::Message(self.fields(Some('}'))?)),
            Some(Token::Punct('<')) => Ok(Value::Message(self.fields(Some('>'))?)),
            Some(Token::Punct('[')) => {
                let mut items = Vec::new();
                if self.eat(']') {
                    return Ok(Value::List(items));
                }
                loop {
                    items.push(self.value(true)?);
                    if self.eat(']') {
                        return Ok(Value::List(items));
                    }
                    if !self.eat(',') {
                        return Err(format!("line {}: expected `,` or `]`", self.line()));
                    }
                }
            }
            Some(Token::Word(w)) if after_colon => Ok(Value::Scalar(w)),
            Some(Token::Str(s)) if after_colon => {
                // Adjacent strings concatenate.
                let mut s = s;
                while let Some(Token::Str(more)) = self.peek().cloned() {
                    self.at += 1;
                    s.push_str(&more);
                }
                Ok(Value::Scalar(s))
            }
            other => Err(format!("line {line}: expected a value, got {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_triton_config() {
        let text = r#"
            name: "digits"   # the model
            platform: "onnxruntime_onnx"
            max_batch_size: 256
            input [ { name: "z" data_type: TYPE_FP32 dims: [ 100 ] },
                    { name: "label", data_type: TYPE_INT64, dims: [ 1 ] reshape: { shape: [ ] } } ]
            dynamic_batching { max_queue_delay_microseconds: 100 preferred_batch_size: [4, 8] }
            version_policy: { specific: { versions: [1, 3] } }
        "#;
        let f = parse(text).unwrap();
        assert_eq!(
            scalar::<String>(&f, "name").unwrap().as_deref(),
            Some("digits")
        );
        assert_eq!(scalar::<usize>(&f, "max_batch_size").unwrap(), Some(256));
        let Some(Value::List(inputs)) = field(&f, "input") else {
            panic!("{f:?}")
        };
        assert_eq!(inputs.len(), 2);
        let Some(Value::Message(db)) = field(&f, "dynamic_batching") else {
            panic!()
        };
        assert_eq!(
            scalar::<u64>(db, "max_queue_delay_microseconds").unwrap(),
            Some(100)
        );
        let Some(Value::Message(vp)) = field(&f, "version_policy") else {
            panic!()
        };
        let Some(Value::Message(sp)) = field(vp, "specific") else {
            panic!()
        };
        assert_eq!(
            field(sp, "versions"),
            Some(&Value::List(vec![
                Value::Scalar("1".into()),
                Value::Scalar("3".into())
            ]))
        );
        assert!(
            scalar::<usize>(&f, "platform").is_err(),
            "a string is not a number"
        );
    }

    #[test]
    fn errors_name_the_line() {
        for (text, line) in [
            ("name: \"a\"\nmax_batch_size: {", "line 2"),
            ("name: \"unterminated", "line 1"),
            ("a: 1\nb: 2\n}", "line 3"),
            ("a: [1 2]", "line 1"),
            ("a: 1\n$", "line 2"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(line), "{text:?}: {e}");
        }
    }
}
