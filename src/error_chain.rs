//! Errors as one line for the log: what was being done, the error, and every cause below it.

/// `context`, then `error` and each `source()` of its chain, separated by `: `.
pub fn describe(context: &str, error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = format!("{context}: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
