//! The command line: what an operator can type. The settings of `serve` are declared in
//! `config`, each with the environment variable it also reads.

use std::ffi::OsString;

use clap::{
    builder::ValueParser,
    error::{ContextKind, ContextValue, ErrorKind},
    Arg, Args, CommandFactory, FromArgMatches, Parser, Subcommand,
};

use crate::config::{ConfigError, DatabaseArgs, ServeArgs};

#[derive(Debug, Parser)]
#[command(name = "storefront", version, about = "Storefront shop backend", args_override_self = true)]
pub struct Cli {
    /// Without a subcommand, `storefront` serves (so `cargo run` starts the server).
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    database: DatabaseArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server (applies pending migrations first).
    Serve(Box<ServeArgs>),
    /// Apply, revert or list database migrations.
    Migrate {
        #[command(subcommand)]
        action: MigrateAction,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Manage users from the command line (how the first admin is made).
    User {
        #[command(subcommand)]
        action: UserAction,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Print the OpenAPI document.
    Openapi,
    /// Print live updates, one JSON event per line, reconnecting without a gap. The access
    /// token comes from STOREFRONT_TOKEN or, with --token-stdin, from standard input.
    Tail(TailArgs),
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// The service's URL (http://, https://, ws:// or wss://; /api/v1/ws is added).
    #[arg(long, env = "STOREFRONT_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Comma-separated topics: products, orders, account, ops [default: products,orders,account
    /// with a token, products without].
    #[arg(long, value_delimiter = ',')]
    pub topics: Vec<String>,
    /// Start after this outbox event id: what came after it is printed first [default: from now].
    #[arg(long)]
    pub since: Option<i64>,
    /// Read the access token from the first line of standard input (instead of STOREFRONT_TOKEN).
    #[arg(long)]
    pub token_stdin: bool,
}

#[derive(Debug, Subcommand)]
pub enum MigrateAction {
    /// Apply every pending migration.
    Run,
    /// Revert the most recent migration.
    Revert,
    /// List migrations and whether each is applied.
    Status,
}

#[derive(Subcommand)]
pub enum UserAction {
    /// Create a user (or an admin) directly in the database. The password is prompted
    /// for (not echoed), or read from standard input with --password-stdin.
    Create {
        /// Email address of the new user.
        #[arg(long)]
        email: String,
        /// Read the password from the first line of standard input (for scripts).
        #[arg(long, conflicts_with = "password")]
        password_stdin: bool,
        /// The password itself. Discouraged: it stays in shell history and shows in `ps`.
        #[arg(long)]
        password: Option<String>,
        /// Display name (defaults to the part of the email before the @).
        #[arg(long)]
        name: Option<String>,
        /// admin or user.
        #[arg(long, default_value = "user")]
        role: String,
    },
}

/// `--password` never shows in Debug output.
impl std::fmt::Debug for UserAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self::Create { email, password_stdin, password, name, role } = self;
        f.debug_struct("Create")
            .field("email", email)
            .field("password_stdin", password_stdin)
            .field("password", &crate::domain::redact::optional(password))
            .field("name", name)
            .field("role", role)
            .finish()
    }
}

impl Cli {
    /// Parses the process arguments. Help, version and usage errors end the process as clap
    /// does; a setting whose value does not parse is a one-line `ConfigError`.
    pub fn parse_args() -> Result<Command, ConfigError> {
        Self::parse_command(std::env::args_os())
    }

    /// Without a subcommand, `storefront [flags]` is `storefront serve [flags]`. The database
    /// flags are global (accepted before or after any subcommand); the other settings of
    /// `serve` given before another subcommand would be ignored, so they are refused.
    pub fn parse_command<I, T>(args: I) -> Result<Command, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let mut args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        if let Some(command) = Self::parse_once(&args)? {
            return Ok(command);
        }
        args.insert(1.min(args.len()), "serve".into());
        // Right after the binary's name, `serve` is always taken for the subcommand.
        Self::parse_once(&args)?.ok_or_else(|| ConfigError::new("serve", "no subcommand was recognised"))
    }

    fn parse_once(args: &[OsString]) -> Result<Option<Command>, ConfigError> {
        // `serve`'s own flags are known before the subcommand only to be recognised there:
        // without environment, default or parser, so a setting is read once, by `serve`.
        let serve = ServeArgs::augment_args(clap::Command::new("serve"));
        let serve_flags = serve.get_arguments().filter(|arg| !arg.is_global_set()).map(|arg| {
            arg.clone().env(None::<&str>).default_value(None::<&str>).value_parser(ValueParser::os_string()).hide(true)
        });
        let mut command = Self::command().args(serve_flags);
        let matches = command.try_get_matches_from_mut(args).map_err(|error| invalid_setting(&command, error))?;
        let Some((subcommand, _)) = matches.subcommand() else { return Ok(None) };
        let misplaced = matches.ids().find_map(|id| {
            let arg = command.get_arguments().find(|arg| arg.get_id() == id)?;
            (!arg.is_global_set()).then(|| arg.get_long().unwrap_or_default().to_owned())
        });
        if let Some(long) = misplaced {
            let message = if subcommand == "serve" {
                format!("--{long} goes after `serve`: storefront serve --{long} …")
            } else {
                format!("--{long} is a setting of `serve`; it cannot be used with `{subcommand}`")
            };
            command.error(ErrorKind::ArgumentConflict, message).exit();
        }
        let cli = Self::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
        Ok(cli.command)
    }
}

/// A value a parser refused becomes one line naming the environment variable (the name an
/// operator looks for in a deployment); any other error is clap's own, help included.
fn invalid_setting(command: &clap::Command, error: clap::Error) -> ConfigError {
    let flag = match error.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(shown)) if error.kind() == ErrorKind::ValueValidation => {
            shown.split([' ', '=']).next().unwrap_or_default().trim_start_matches('-').to_owned()
        }
        _ => error.exit(),
    };
    // The copies of `serve`'s flags before the subcommand have no variable; `serve`'s own do.
    let variable = all_arguments(command).filter(|arg| arg.get_long() == Some(flag.as_str())).find_map(Arg::get_env);
    let setting = variable.map_or_else(|| format!("--{flag}"), |env| env.to_string_lossy().into());
    let message = std::error::Error::source(&error).map_or_else(|| error.kind().to_string(), ToString::to_string);
    ConfigError::new(setting, message)
}

fn all_arguments(command: &clap::Command) -> Box<dyn Iterator<Item = &Arg> + '_> {
    Box::new(command.get_arguments().chain(command.get_subcommands().flat_map(all_arguments)))
}
