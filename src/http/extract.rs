//! The boundary: how request bodies, queries and paths become typed values, and how they
//! fail. Malformed JSON and wrong JSON types are 400, unknown or missing fields and
//! invalid values 422, a member given twice in one object (`{"password":"a","password":"b"}`)
//! 422 rather than silently the last one, oversized bodies 413, a body that is not
//! `application/json` 415;
//! every failure names the field in the client's terms (`items[0].quantity`), never the
//! parser's internals.
//!
//! One rule for text: no string a client sends (JSON string, query value) may contain a
//! control character (Unicode Cc: U+0000–U+001F, U+007F–U+009F), except tab, line feed
//! and carriage return in a `description`, which is free prose. Such a request is 422
//! naming the field, and changes nothing. PostgreSQL cannot store NUL at all and SQLite
//! would store it silently, so the rule lives here, before either sees it.

use std::{
    borrow::Cow,
    cell::RefCell,
    fmt::{self, Display},
    ops::Deref,
};

use actix_web::{
    dev::Payload,
    error::{JsonPayloadError, PathError, QueryPayloadError},
    http::{header, StatusCode},
    web, FromRequest, HttpRequest,
};
use futures_util::future::LocalBoxFuture;
use serde::de::{self, DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::http::error::{AppError, FieldError};

pub const BODY_LIMIT_BYTES: usize = 64 * 1024;
/// The only fields whose text may span lines.
const PROSE_FIELDS: &[&str] = &["description"];
const CONTROL_MESSAGE: &str = "must not contain control characters";

/// A JSON request body, checked by the rules above.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T> Json<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> Deref for Json<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for Json<T> {
    type Error = AppError;
    type Future = LocalBoxFuture<'static, Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let media_type_ok = is_json_media_type(req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()));
        let body = web::Bytes::from_request(req, payload);
        Box::pin(async move {
            if !media_type_ok {
                return Err(AppError::UnsupportedMediaType);
            }
            let bytes = body.await.map_err(|error| {
                if error.as_response_error().status_code() == StatusCode::PAYLOAD_TOO_LARGE {
                    AppError::PayloadTooLarge
                } else {
                    AppError::BadRequest("The request body could not be read.".into())
                }
            })?;
            parse_json(&bytes).map(Json)
        })
    }
}

/// `application/json` in any case, with no parameter but an optional `charset=utf-8`.
pub fn is_json_media_type(content_type: Option<&str>) -> bool {
    let Some(content_type) = content_type else { return false };
    let mut parts = content_type.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return false;
    }
    parts.all(|parameter| {
        let Some((name, value)) = parameter.split_once('=') else { return parameter.trim().is_empty() };
        name.trim().eq_ignore_ascii_case("charset") && value.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
    })
}

/// Parses (refusing a member given twice), applies the text rule, then maps the JSON onto `T`.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AppError> {
    let duplicate = RefCell::new(None);
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed = UniqueKeys { path: String::new(), duplicate: &duplicate }
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value));
    if let Some(path) = duplicate.into_inner() {
        return Err(AppError::Validation(vec![FieldError::new(path, "is given more than once")]));
    }
    let mut value = parsed.map_err(|error| {
        AppError::BadRequest(format!(
            "The request body is not valid JSON (line {}, column {}).",
            error.line(),
            error.column()
        ))
    })?;
    let mut errors = Vec::new();
    check_text(&value, &mut String::new(), None, &mut errors);
    if !errors.is_empty() {
        return Err(AppError::Validation(errors));
    }
    normalize_integers(&mut value);
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        classify(if path == "." { "" } else { &path }, error.inner())
    })
}

/// A JSON value, built as `serde_json::Value` is but refusing an object that names a member
/// twice: `serde_json` would keep the last silently, so a body could say one thing to a
/// reader (a log, a proxy, a WAF) and another to the service. The path of the first repeated
/// member lands in `duplicate`, in the client's terms (`items[0].quantity`).
struct UniqueKeys<'a> {
    path: String,
    duplicate: &'a RefCell<Option<String>>,
}

impl<'a> UniqueKeys<'a> {
    fn at(&self, path: String) -> Self {
        Self { path, duplicate: self.duplicate }
    }
}

impl<'de> DeserializeSeed<'de> for UniqueKeys<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UniqueKeys<'_> {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any JSON value")
    }
    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }
    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::from(value))
    }
    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::from(value))
    }
    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        Ok(Value::from(value))
    }
    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }
    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Value, A::Error> {
        let mut values = Vec::new();
        while let Some(value) = items.next_element_seed(self.at(format!("{}[{}]", self.path, values.len())))? {
            values.push(value);
        }
        Ok(Value::Array(values))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut members: A) -> Result<Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = members.next_key::<String>()? {
            let path = joined(&self.path, &key);
            if object.contains_key(&key) {
                *self.duplicate.borrow_mut() = Some(path);
                return Err(de::Error::custom("a member is given more than once"));
            }
            let value = members.next_value_seed(self.at(path))?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// Collects a field error for every string (and object key) with a forbidden character.
fn check_text(value: &Value, path: &mut String, field: Option<&str>, errors: &mut Vec<FieldError>) {
    match value {
        Value::String(text) if has_forbidden_control(text, field) => {
            errors.push(FieldError::new(path.clone(), CONTROL_MESSAGE));
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                let length = path.len();
                path.push_str(&format!("[{index}]"));
                check_text(item, path, field, errors);
                path.truncate(length);
            }
        }
        Value::Object(members) => {
            for (key, member) in members {
                let length = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                if key.chars().any(char::is_control) {
                    errors.push(FieldError::new(path.clone(), CONTROL_MESSAGE));
                } else {
                    check_text(member, path, Some(key), errors);
                }
                path.truncate(length);
            }
        }
        _ => {}
    }
}

pub fn has_forbidden_control(text: &str, field: Option<&str>) -> bool {
    text.chars().any(|c| is_forbidden_control(c, field))
}

/// Whether `c` may not appear in a string sent as `field` (a JSON member's name; `None` for
/// array items at the top level and query values).
pub fn is_forbidden_control(c: char, field: Option<&str>) -> bool {
    c.is_control() && !(field.is_some_and(is_prose) && matches!(c, '\t' | '\n' | '\r'))
}

/// Whether `field` is free prose, whose text may span lines.
pub fn is_prose(field: &str) -> bool {
    PROSE_FIELDS.contains(&field)
}

/// JSON has one number type: `100.0` is the integer 100 (as JSON Schema's `integer`
/// says), so integral numbers are handed to integer fields as integers.
fn normalize_integers(value: &mut Value) {
    match value {
        Value::Number(number) if !number.is_i64() && !number.is_u64() => {
            if let Some(float) = number.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15) {
                #[allow(clippy::cast_possible_truncation)] // integral and within ±2^53, so exact
                let integer = float as i64;
                *value = Value::from(integer);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize_integers),
        Value::Object(members) => members.values_mut().for_each(normalize_integers),
        _ => {}
    }
}

fn joined(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// The name between the first pair of backticks of a serde message.
fn quoted(message: &str) -> Option<&str> {
    message.split('`').nth(1)
}

/// serde's messages follow fixed patterns (`invalid type: …, expected …`, `missing field
/// \`x\``); the field comes from the path, and only the kind of failure from the message.
fn classify(path: &str, error: &impl Display) -> AppError {
    let message = error.to_string();
    let field = |name: Option<&str>| name.map_or_else(|| path.to_owned(), |name| joined(path, name));
    if message.starts_with("missing field") {
        return AppError::Validation(vec![FieldError::new(field(quoted(&message)), "is required")]);
    }
    if message.starts_with("unknown field") {
        // The path already ends at the unknown key.
        return AppError::Validation(vec![FieldError::new(field(None), "is not a known field")]);
    }
    if message.starts_with("duplicate field") {
        return AppError::Validation(vec![FieldError::new(field(quoted(&message)), "is given more than once")]);
    }
    let expected = message.rsplit_once("expected ").map(|(_, expected)| user_terms(expected));
    if message.starts_with("invalid type") {
        let wanted = expected.unwrap_or_else(|| "of another type".into());
        return AppError::Malformed(vec![FieldError::new(field(None), format!("must be {wanted}"))]);
    }
    let wanted = expected.map_or_else(|| "is not valid".to_owned(), |expected| format!("must be {expected}"));
    AppError::Validation(vec![FieldError::new(field(None), wanted)])
}

/// serde's `expected …` in a client's words.
fn user_terms(expected: &str) -> Cow<'static, str> {
    let expected = expected.trim_end_matches('.').trim();
    let plain = match expected {
        "i8" | "i16" | "i32" | "i64" | "isize" => "an integer",
        "u8" | "u16" | "u32" | "u64" | "usize" => "a non-negative integer",
        "f32" | "f64" => "a number",
        "a string" | "a borrowed string" | "string" => "a string",
        "a boolean" => "true or false",
        "a sequence" => "an array",
        "a UUID string" => "a UUID",
        _ if expected.starts_with("struct ") || expected == "a map" => "an object",
        _ if expected.starts_with("one of ") => return Cow::Owned(expected.replace('`', "\"")),
        _ => return Cow::Owned(format!("{} value", expected.trim_start_matches("a ").trim_start_matches("an "))),
    };
    Cow::Borrowed(plain)
}

/// A query string, checked by the same text rule; every problem with it is 422 naming
/// the parameter (a query has no types, so `page=abc` is an invalid value).
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T> Query<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> Deref for Query<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned> FromRequest for Query<T> {
    type Error = AppError;
    type Future = std::future::Ready<Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        std::future::ready(parse_query(req.query_string()).map(Query))
    }
}

pub fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, AppError> {
    let mut errors: Vec<FieldError> = Vec::new();
    let mut seen: Vec<Cow<str>> = Vec::new();
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if name.chars().any(char::is_control) || has_forbidden_control(&value, None) {
            errors.push(FieldError::new(name.escape_default().to_string(), CONTROL_MESSAGE));
        } else if seen.contains(&name) {
            errors.push(FieldError::new(name.clone(), "is given more than once"));
        }
        seen.push(name);
    }
    if !errors.is_empty() {
        errors.dedup();
        return Err(AppError::Validation(errors));
    }
    let deserializer = serde_urlencoded::Deserializer::new(url::form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        let path = if path == "." { "" } else { &path };
        let message = error.inner().to_string();
        let wanted = if message.contains("digit") || message.contains("number too") || message.contains("integer") {
            "must be an integer"
        } else if message.contains("UUID") {
            "must be a UUID"
        } else {
            return match classify(path, error.inner()) {
                AppError::Malformed(errors) => AppError::Validation(errors),
                other => other,
            };
        };
        AppError::Validation(vec![FieldError::new(path, wanted)])
    })
}

/// For handlers of other modules that still take actix's own extractors.
pub fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(BODY_LIMIT_BYTES)
        .content_type_required(true)
        .content_type(|mime| mime.essence_str() == "application/json")
        .error_handler(|error, _req| json_error(error).into())
}

pub fn payload_config() -> web::PayloadConfig {
    web::PayloadConfig::default().limit(BODY_LIMIT_BYTES)
}

/// Every path parameter is an id: one that is not a UUID names nothing, so 404, saying
/// which parameter was malformed.
pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|error: PathError, req: &HttpRequest| {
        let PathError::Deserialize(_) = error else {
            return AppError::BadRequest("The path is not valid.".into()).into();
        };
        let malformed = req.match_info().iter().find(|(_, value)| uuid::Uuid::parse_str(value).is_err());
        let detail = match malformed {
            Some((name, _)) => format!("No resource exists at this path: `{name}` must be a UUID."),
            None => "No resource exists at this path.".to_owned(),
        };
        AppError::NotFound(detail).into()
    })
}

pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|error: QueryPayloadError, req: &HttpRequest| {
        match parse_query::<serde_json::Map<String, Value>>(req.query_string()) {
            Err(error) => error.into(),
            Ok(_) => {
                tracing::debug!(%error, "query rejected");
                AppError::Validation(vec![FieldError::new("query", "is not valid for this endpoint")]).into()
            }
        }
    })
}

fn json_error(error: JsonPayloadError) -> AppError {
    match error {
        JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => AppError::PayloadTooLarge,
        JsonPayloadError::ContentType => AppError::UnsupportedMediaType,
        JsonPayloadError::Deserialize(cause) if cause.is_data() => classify("", &cause),
        JsonPayloadError::Deserialize(cause) => AppError::BadRequest(format!(
            "The request body is not valid JSON (line {}, column {}).",
            cause.line(),
            cause.column()
        )),
        _ => AppError::BadRequest("The request body could not be read.".into()),
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Line {
        product_id: String,
        quantity: i64,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        items: Vec<Line>,
        description: Option<String>,
    }

    fn field_errors(error: AppError) -> (u16, Vec<(String, String)>) {
        use actix_web::ResponseError;
        let status = error.status_code().as_u16();
        let problem = error.to_problem();
        (status, problem.errors.into_iter().map(|e| (e.field, e.message)).collect())
    }

    #[test]
    fn failures_name_the_field_in_plain_words() {
        let wrong_type = parse_json::<Body>(br#"{"items":[{"product_id":"p","quantity":"2"}]}"#).unwrap_err();
        assert_eq!(field_errors(wrong_type), (400, vec![("items[0].quantity".into(), "must be an integer".into())]));
        let missing = parse_json::<Body>(br#"{"items":[{"product_id":"p"}]}"#).unwrap_err();
        assert_eq!(field_errors(missing), (422, vec![("items[0].quantity".into(), "is required".into())]));
        let unknown = parse_json::<Body>(br#"{"items":[],"colour":1}"#).unwrap_err();
        assert_eq!(field_errors(unknown).1[0].0, "colour");
        let not_json = parse_json::<Body>(b"{").unwrap_err();
        assert!(!not_json.to_problem().detail.contains("EOF"));
    }

    #[test]
    fn a_member_given_twice_is_refused_wherever_it_is() {
        let twice = parse_json::<Body>(br#"{"items":[],"description":"a","description":"b"}"#).unwrap_err();
        assert_eq!(field_errors(twice), (422, vec![("description".into(), "is given more than once".into())]));
        let nested = br#"{"items":[{"product_id":"p","quantity":1},{"product_id":"p","quantity":1,"quantity":9}]}"#;
        let nested = parse_json::<Body>(nested).unwrap_err();
        assert_eq!(field_errors(nested), (422, vec![("items[1].quantity".into(), "is given more than once".into())]));
        // Even where the type would take anything, and when both say the same.
        let anything = parse_json::<Value>(br#"{"a":{"b":1,"b":1}}"#).unwrap_err();
        assert_eq!(field_errors(anything).1[0].0, "a.b");
        // The same name in different objects is no repetition; trailing garbage is still 400.
        let fine = parse_json::<Value>(br#"{"a":{"b":1},"c":[{"b":2},{"b":3}],"n":1.5,"m":-2,"z":null}"#).unwrap();
        assert_eq!(fine["c"][1]["b"], 3);
        assert_eq!(fine["n"], 1.5);
        assert_eq!(field_errors(parse_json::<Value>(br#"{"a":1} x"#).unwrap_err()).0, 400);
    }

    #[test]
    fn integral_floats_are_integers() {
        let body = parse_json::<Body>(br#"{"items":[{"product_id":"p","quantity":100.0}]}"#).unwrap();
        assert_eq!(body.items[0].quantity, 100);
        let fraction = parse_json::<Body>(br#"{"items":[{"product_id":"p","quantity":1.5}]}"#).unwrap_err();
        assert_eq!(field_errors(fraction).0, 400);
    }

    #[test]
    fn control_characters_are_refused_except_line_breaks_in_prose() {
        let nul = parse_json::<Body>(b"{\"items\":[{\"product_id\":\"a\\u0000\",\"quantity\":1}]}").unwrap_err();
        assert_eq!(field_errors(nul), (422, vec![("items[0].product_id".into(), CONTROL_MESSAGE.into())]));
        let prose = parse_json::<Body>(b"{\"items\":[],\"description\":\"one\\ntwo\\tthree\"}").unwrap();
        assert_eq!(prose.description.as_deref(), Some("one\ntwo\tthree"));
        let bell = parse_json::<Body>(b"{\"items\":[],\"description\":\"\\u0007\"}").unwrap_err();
        assert_eq!(field_errors(bell).1[0].0, "description");
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Filter {
        q: Option<String>,
        page: Option<i64>,
        user_id: Option<uuid::Uuid>,
    }

    #[test]
    fn query_problems_are_422_naming_the_parameter() {
        let field = |query: &str| field_errors(parse_query::<Filter>(query).unwrap_err());
        assert_eq!(field("q=%00"), (422, vec![("q".into(), CONTROL_MESSAGE.into())]));
        assert_eq!(field("page=abc"), (422, vec![("page".into(), "must be an integer".into())]));
        assert_eq!(field("user_id=nope"), (422, vec![("user_id".into(), "must be a UUID".into())]));
        assert_eq!(field("q=a&q=b"), (422, vec![("q".into(), "is given more than once".into())]));
        assert_eq!(parse_query::<Filter>("q=caf%C3%A9&page=2").unwrap().page, Some(2));
    }

    #[test]
    fn only_plain_json_media_types_are_accepted() {
        for accepted in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
        ] {
            assert!(is_json_media_type(Some(accepted)), "{accepted}");
        }
        for refused in [
            None,
            Some("text/json"),
            Some("application/problem+json"),
            Some("application/json; charset=latin1"),
            Some("application/json; foo=bar"),
        ] {
            assert!(!is_json_media_type(refused), "{refused:?}");
        }
    }
}
