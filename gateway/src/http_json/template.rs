//! `google.api.http` path templates: parsing, and matching request paths.
//!
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! Verb     = ":" LITERAL ;
//! ```
//!
//! `{id}` is `{id=*}`: one segment. `**` matches the rest of the path and
//! may only come last.

/// One segment of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    One,
    /// `**`: the rest of the path (zero or more segments).
    Rest,
}

/// A variable: the request field it sets, and the segments it spans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    /// Dotted field path, e.g. `event_id` or `parent.name`.
    pub field_path: String,
    first: usize,
    /// One past its last segment.
    end: usize,
}

/// A parsed path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    segments: Vec<Segment>,
    variables: Vec<Variable>,
    verb: Option<String>,
}

/// Why a template was refused (at start-up, naming the method).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("path template {template:?}: {reason}")]
pub struct TemplateError {
    template: String,
    reason: &'static str,
}

impl PathTemplate {
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let fail = |reason| TemplateError {
            template: template.to_owned(),
            reason,
        };
        let rest = template
            .strip_prefix('/')
            .ok_or_else(|| fail("must start with /"))?;
        // The verb follows the last `:` outside braces.
        let mut depth = 0i32;
        let mut verb_at = None;
        for (i, c) in rest.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ':' if depth == 0 => verb_at = Some(i),
                _ => {}
            }
        }
        let (body, verb) = match verb_at {
            Some(i) => (&rest[..i], Some(rest[i + 1..].to_owned())),
            None => (rest, None),
        };
        let mut segments = Vec::new();
        let mut variables = Vec::new();
        let mut chars = body;
        while !chars.is_empty() {
            if let Some(after) = chars.strip_prefix('{') {
                let close = after.find('}').ok_or_else(|| fail("unclosed {"))?;
                let inner = &after[..close];
                let (field_path, pattern) = inner.split_once('=').unwrap_or((inner, "*"));
                if field_path.is_empty() || pattern.contains('{') {
                    return Err(fail("bad variable"));
                }
                let first = segments.len();
                for part in pattern.split('/') {
                    segments.push(segment(part).ok_or_else(|| fail("empty segment"))?);
                }
                variables.push(Variable {
                    field_path: field_path.to_owned(),
                    first,
                    end: segments.len(),
                });
                chars = &after[close + 1..];
            } else {
                let end = chars.find('/').unwrap_or(chars.len());
                let part = &chars[..end];
                if part.contains('}') {
                    return Err(fail("unopened }"));
                }
                segments.push(segment(part).ok_or_else(|| fail("empty segment"))?);
                chars = &chars[end..];
            }
            match chars.strip_prefix('/') {
                Some("") => return Err(fail("trailing /")),
                Some(next) => chars = next,
                None if chars.is_empty() => {}
                None => return Err(fail("a variable must fill whole segments")),
            }
        }
        if segments[..segments.len().saturating_sub(1)].contains(&Segment::Rest) {
            return Err(fail("** must be the last segment"));
        }
        Ok(PathTemplate {
            segments,
            variables,
            verb,
        })
    }

    /// The variables' values if `path` (without the query) matches:
    /// (field path, percent-decoded value). `None` when it does not match;
    /// a value that is not UTF-8 once decoded does not match either.
    pub fn matches(&self, path: &str) -> Option<Vec<(&str, String)>> {
        let rest = path.strip_prefix('/')?;
        let rest = match &self.verb {
            Some(verb) => rest.strip_suffix(verb.as_str())?.strip_suffix(':')?,
            None => rest,
        };
        let parts: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        // Where each template segment's match ends in `parts`.
        let mut ends = Vec::with_capacity(self.segments.len());
        let mut at = 0;
        for segment in &self.segments {
            match segment {
                Segment::Literal(literal) => {
                    if parts.get(at) != Some(&literal.as_str()) {
                        return None;
                    }
                    at += 1;
                }
                Segment::One => {
                    if parts.get(at).is_none_or(|p| p.is_empty()) {
                        return None;
                    }
                    at += 1;
                }
                Segment::Rest => at = parts.len(),
            }
            ends.push(at);
        }
        if at != parts.len() {
            return None;
        }
        let mut values = Vec::with_capacity(self.variables.len());
        for variable in &self.variables {
            let from = if variable.first == 0 {
                0
            } else {
                ends[variable.first - 1]
            };
            let to = ends[variable.end - 1];
            let mut value = String::new();
            for (i, part) in parts[from..to].iter().enumerate() {
                if i > 0 {
                    value.push('/');
                }
                value.push_str(&percent_decode(part)?);
            }
            values.push((variable.field_path.as_str(), value));
        }
        Some(values)
    }

    pub fn variables(&self) -> &[Variable] {
        &self.variables
    }

    /// The template as OpenAPI writes paths: `/v1/events/{event_id}`.
    /// Variables spanning more than one segment keep their name only (an
    /// OpenAPI parameter never contains `/`).
    pub fn openapi_path(&self) -> String {
        let mut path = String::new();
        let mut i = 0;
        while i < self.segments.len() {
            path.push('/');
            if let Some(variable) = self.variables.iter().find(|v| v.first == i) {
                path.push('{');
                path.push_str(&variable.field_path);
                path.push('}');
                i = variable.end;
                continue;
            }
            match &self.segments[i] {
                Segment::Literal(literal) => path.push_str(literal),
                Segment::One => path.push('*'),
                Segment::Rest => path.push_str("**"),
            }
            i += 1;
        }
        if let Some(verb) = &self.verb {
            path.push(':');
            path.push_str(verb);
        }
        path
    }

    /// How specific the template is, to try more specific ones first:
    /// literals count most, then single segments.
    pub fn specificity(&self) -> (usize, usize) {
        let literals = self
            .segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count();
        let fixed = self
            .segments
            .iter()
            .filter(|s| !matches!(s, Segment::Rest))
            .count();
        (literals, fixed)
    }
}

fn segment(part: &str) -> Option<Segment> {
    match part {
        "" => None,
        "*" => Some(Segment::One),
        "**" => Some(Segment::Rest),
        literal => Some(Segment::Literal(literal.to_owned())),
    }
}

/// `%XX` decoding of one path segment (`+` stays `+` in paths).
fn percent_decode(part: &str) -> Option<String> {
    if !part.contains('%') {
        return Some(part.to_owned());
    }
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = part.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_variables() {
        let t = PathTemplate::parse("/v1/events/{event_id}/votes/{option_id}").unwrap();
        assert_eq!(
            t.matches("/v1/events/e%201/votes/3"),
            Some(vec![
                ("event_id", "e 1".to_owned()),
                ("option_id", "3".to_owned())
            ])
        );
        assert_eq!(t.matches("/v1/events/e1/votes"), None);
        assert_eq!(t.matches("/v1/events//votes/3"), None);
        assert_eq!(t.matches("/v1/events/e1/votes/3/x"), None);
        assert_eq!(t.matches("/v1/events/%ZZ/votes/3"), None);
        assert_eq!(t.openapi_path(), "/v1/events/{event_id}/votes/{option_id}");
    }

    #[test]
    fn variables_with_patterns_and_verbs() {
        let t = PathTemplate::parse("/v1/{name=communities/*}").unwrap();
        assert_eq!(
            t.matches("/v1/communities/c1"),
            Some(vec![("name", "communities/c1".to_owned())])
        );
        assert_eq!(t.matches("/v1/users/c1"), None);
        let t = PathTemplate::parse("/v1/{path=files/**}:download").unwrap();
        assert_eq!(
            t.matches("/v1/files/a/b:download"),
            Some(vec![("path", "files/a/b".to_owned())])
        );
        assert_eq!(t.matches("/v1/files/a/b"), None);
        let t = PathTemplate::parse("/v1/me").unwrap();
        assert_eq!(t.matches("/v1/me"), Some(vec![]));
        assert_eq!(t.matches("/v1/me/"), None);
    }

    #[test]
    fn bad_templates() {
        for bad in [
            "v1",
            "/v1/",
            "/v1/{id",
            "/v1/x}",
            "/v1/**/x",
            "/v1//x",
            "/v1/a{id}",
        ] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad}");
        }
    }
}
