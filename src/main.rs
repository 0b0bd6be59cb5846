//! The `storefront` binary: parse the command line and dispatch.

use std::process::ExitCode;

use storefront::{
    auth::password::hash_password,
    cli::{Cli, Command, MigrateAction, TailArgs, UserAction},
    config::{Config, DatabaseConfig, LogFormat},
    db::UseCase,
    db::{
        bootstrap::{self, IfMissing},
        migrations,
        outbox::Outbox,
        users::CreateUser,
    },
    domain::user::{validate_new_user, NewUser, Role},
    http::error::AppError,
    tail::TailOptions,
    telemetry, Application,
};

fn main() -> ExitCode {
    let outcome = Cli::parse_args().map_err(|e| e.to_string()).and_then(|command| match command {
        Command::Serve(args) => Config::from_serve_args(*args).map_err(|e| e.to_string()).and_then(serve),
        Command::Migrate { action, database } => {
            init_cli_logs();
            migrate(&database.for_cli(), &action)
        }
        Command::User { action: UserAction::Create { email, password_stdin, password, name, role }, database } => {
            init_cli_logs();
            let password = read_password(password, password_stdin)?;
            create_user(&database.for_cli(), &email, &password, name.as_deref(), &role)
        }
        Command::Openapi => print_openapi(),
        Command::Tail(args) => tail(&args),
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("storefront: {message}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Config) -> Result<(), String> {
    telemetry::init(config.ops.log_format);
    if config.auth.jwt_secret.generated {
        tracing::warn!("JWT_SECRET is not set: generated a random one; tokens will not survive a restart");
    }
    actix_rt::System::new().block_on(async move {
        let app = Application::build(config).map_err(|e| e.to_string())?;
        app.run_until_stopped().await.map_err(|e| format!("server failed: {e}"))
    })
}

/// The CLI commands log what they do to the database (waiting for it, creating it) to
/// stderr, in the LOG_FORMAT that `serve` would use.
fn init_cli_logs() {
    let json = std::env::var("LOG_FORMAT").is_ok_and(|format| format.trim().eq_ignore_ascii_case("json"));
    telemetry::init(if json { LogFormat::Json } else { LogFormat::Pretty });
}

fn migrate(database: &DatabaseConfig, action: &MigrateAction) -> Result<(), String> {
    // Only `run` may create the database: a status query or a revert must not leave one behind.
    let if_missing = if matches!(action, MigrateAction::Run) { IfMissing::Create } else { IfMissing::LeaveAlone };
    let Some(mut conn) = bootstrap::open(database, if_missing).map_err(|e| e.message)? else {
        return match action {
            MigrateAction::Status => {
                for version in migrations::known_versions(&database.url) {
                    println!("pending {version}");
                }
                Ok(())
            }
            _ => Err(format!("nothing to revert: the database {:?} does not exist", database.url)),
        };
    };
    match action {
        MigrateAction::Run => {
            let applied = migrations::run_pending(&mut conn).map_err(|e| format!("migrations failed: {e}"))?;
            if applied.is_empty() {
                println!("no pending migrations");
            }
            for version in applied {
                println!("applied {version}");
            }
        }
        MigrateAction::Revert => {
            let version = migrations::revert_last(&mut conn).map_err(|e| format!("revert failed: {e}"))?;
            println!("reverted {version}");
        }
        MigrateAction::Status => {
            for state in migrations::status(&mut conn).map_err(|e| format!("status failed: {e}"))? {
                println!("{} {}", if state.applied { "applied" } else { "pending" }, state.version);
            }
        }
    }
    Ok(())
}

/// How operators (and tests) make the first admin: straight to the database, migrating it
/// first if it is new.
fn create_user(
    database: &DatabaseConfig,
    email: &str,
    password: &str,
    name: Option<&str>,
    role: &str,
) -> Result<(), String> {
    let role = Role::parse(role).ok_or_else(|| format!("invalid --role {role:?}: expected admin or user"))?;
    let name = name.unwrap_or_else(|| email.split('@').next().unwrap_or(email));
    let NewUser { email, name } = validate_new_user(email, password, name).map_err(|errors| {
        let reasons: Vec<String> = errors.iter().map(|e| format!("{} {}", e.field, e.message)).collect();
        format!("invalid user: {}", reasons.join("; "))
    })?;
    let password_hash = hash_password(password).map_err(|e| AppError::from(e).to_string())?;
    let mut conn = bootstrap::open(database, IfMissing::Create)
        .map_err(|e| e.message)?
        .ok_or_else(|| "the database could not be created".to_owned())?;
    migrations::run_pending(&mut conn).map_err(|e| format!("migrations failed: {e}"))?;
    let user = CreateUser { email, name, role, password_hash }
        .run(&mut conn, &mut Outbox::unattributed())
        // In the words an API client would be given.
        .map_err(|e| AppError::from(e).to_string())?;
    println!("{}", serde_json::to_string(&user).map_err(|e| e.to_string())?);
    Ok(())
}

/// The password of `user create`: from standard input (scripts), from the flag (kept for
/// compatibility), or prompted for on the terminal without echo, twice.
fn read_password(flag: Option<String>, from_stdin: bool) -> Result<String, String> {
    if let Some(password) = flag {
        return Ok(password);
    }
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map_err(|e| format!("cannot read the password from stdin: {e}"))?;
        return Ok(line.trim_end_matches(['\n', '\r']).to_owned());
    }
    let no_terminal =
        |e: std::io::Error| format!("cannot prompt for the password ({e}); pipe it in with --password-stdin instead");
    let password = rpassword::prompt_password("Password: ").map_err(no_terminal)?;
    let again = rpassword::prompt_password("Repeat password: ").map_err(no_terminal)?;
    if password != again {
        return Err("the passwords do not match".into());
    }
    Ok(password)
}

/// `storefront tail`: the token from standard input or STOREFRONT_TOKEN (never a flag, so
/// it stays out of shell history and `ps`).
fn tail(args: &TailArgs) -> Result<(), String> {
    let token = if args.token_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map_err(|e| format!("cannot read the token from stdin: {e}"))?;
        Some(line)
    } else {
        std::env::var("STOREFRONT_TOKEN").ok()
    };
    let options = TailOptions::new(&args.url, &args.topics, args.since, token)?;
    storefront::tail::run(options)
}

fn print_openapi() -> Result<(), String> {
    // As served by default, without the fault-injection route (mounted only with CHAOS_TOKEN).
    let document =
        serde_json::to_string_pretty(&storefront::http::openapi::document_value(false)).map_err(|e| e.to_string())?;
    println!("{document}");
    Ok(())
}
