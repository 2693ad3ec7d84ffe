//! The `shardmq` command: runs a broker node, or checks a configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use shardmq::config::{self, Config, LogFormat};
use shardmq::cpus;
use tracing_subscriber::EnvFilter;

// `--features system-alloc` leaves the C library's allocator in place, for heap profilers that
// hook malloc (heaptrack, valgrind): `bench/why-idle-heap.sh`.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A clustered MQTT broker: io_uring, thread-per-core.
///
/// Settings come from the built-in defaults (see config/shardmq.toml), then the file given with
/// --config, then SHARDMQ_<SECTION>__<KEY> environment variables
/// (e.g. SHARDMQ_LISTENER__BIND=127.0.0.1:1884).
#[derive(Debug, Parser)]
#[command(name = "shardmq", version, about)]
struct Cli {
    /// TOML configuration file; keys it lacks keep their defaults.
    #[arg(long, short, global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker (the default when no command is given).
    Run,
    /// Load and validate the configuration, then print the effective settings.
    CheckConfig,
    /// Host tuning: check this host against a profile, or print a profile's files.
    Tune {
        #[command(subcommand)]
        action: TuneCommand,
    },
    /// Ask a running node's management API (api.listen, or --api) about the cluster; manage
    /// its API keys (api-key create/list/delete).
    Ctl(shardmq::ctl::CtlArgs),
    /// Add or change a user of a password file (auth.password_file), hashed with argon2id.
    /// The password is asked for twice on a terminal, or read as the first line of stdin.
    Passwd {
        /// The password file (created if missing; other users' lines are kept).
        file: PathBuf,
        /// The user name.
        user: String,
        /// Remove the user instead.
        #[arg(long, short = 'D')]
        delete: bool,
    },
}

#[derive(Debug, Subcommand)]
enum TuneCommand {
    /// Check this host (sysctls, limits, CPUs, huge pages, io_uring) against a profile and the
    /// configuration; exits non-zero when it falls short.
    Check {
        /// Tuning profile: million or default.
        #[arg(long, default_value = "million", value_parser = ["million", "default"])]
        profile: String,
    },
    /// Print a profile's files (tuning/<profile>/sysctl.conf, limits.conf, tuning/shardmq.service).
    Print {
        /// Tuning profile: million or default.
        #[arg(long, default_value = "million", value_parser = ["million", "default"])]
        profile: String,
        /// Only this file: sysctl.conf, limits.conf or shardmq.service.
        #[arg(long, value_parser = ["sysctl.conf", "limits.conf", "shardmq.service"])]
        file: Option<String>,
    },
}

fn main() -> ExitCode {
    shardmq_shards::reexec_with_lazy_commit();
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The chain without a backtrace: configuration errors are the user's, not ours.
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn try_main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    let command = cli.command.take().unwrap_or(Command::Run);
    if let Command::Ctl(args) = &command {
        // Reads the configuration only when it needs api.listen.
        return ctl(&cli, args);
    }
    if let Command::Passwd { file, user, delete } = &command {
        return passwd(file, user, *delete);
    }
    let config = load(&cli)?;
    match command {
        Command::Run => {
            install_tracing(&config)?;
            shardmq::run(config, cli.config.clone())
        }
        Command::CheckConfig => check_config(&config),
        Command::Tune { action } => tune(action, &config),
        Command::Ctl(_) => unreachable!("ctl is handled before the configuration is loaded"),
        Command::Passwd { .. } => unreachable!("passwd needs no configuration"),
    }
}

/// `shardmq passwd FILE USER`: the password from a terminal prompt (twice), or stdin's first line.
fn passwd(file: &std::path::Path, user: &str, delete: bool) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if delete {
        let removed = shardmq_auth::passwd_delete(file, user)
            .with_context(|| format!("updating {}", file.display()))?;
        anyhow::ensure!(removed, "{user} is not in {}", file.display());
        return Ok(());
    }
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ").context("reading the password")?;
        let again =
            rpassword::prompt_password("Reenter password: ").context("reading the password")?;
        anyhow::ensure!(first == again, "the passwords do not match");
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    anyhow::ensure!(!password.is_empty(), "empty password");
    shardmq_auth::passwd_set(file, user, &password)
        .with_context(|| format!("updating {}", file.display()))?;
    Ok(())
}

/// `shardmq ctl ...`: the configuration is read only for api.listen, when --api is not given.
fn ctl(cli: &Cli, args: &shardmq::ctl::CtlArgs) -> anyhow::Result<()> {
    print!("{}", shardmq::ctl::main(args, || Ok(load(cli)?.api))?);
    Ok(())
}

/// `shardmq tune check|print`.
fn tune(action: TuneCommand, config: &Config) -> anyhow::Result<()> {
    use shardmq::tune::{self, HostReader, Profile};
    let named = |name: &str| Profile::named(name).context("unknown profile");
    match action {
        TuneCommand::Check { profile } => {
            let profile = named(&profile)?;
            let findings = tune::check(&HostReader::live(), &profile, config);
            print!("{}", tune::report(&profile, &findings));
            let failed = findings.iter().filter(|f| !f.ok).count();
            anyhow::ensure!(
                failed == 0,
                "this host falls short of the {} profile in {failed} setting(s)",
                profile.name
            );
            Ok(())
        }
        TuneCommand::Print { profile, file } => {
            let profile = named(&profile)?;
            match file {
                Some(file) => print!("{}", profile.file(&file).context("unknown file")?),
                None => print!("{}", profile.print_all()),
            }
            Ok(())
        }
    }
}

fn load(cli: &Cli) -> anyhow::Result<Config> {
    config::load(cli.config.as_deref()).context("invalid configuration")
}

/// Prints the effective configuration and the CPUs it resolves to; fails if those CPUs are not
/// usable here.
fn check_config(config: &Config) -> anyhow::Result<()> {
    let online = cpus::online_cpus();
    let shard_cpus = config
        .node
        .cpus
        .resolve(&online)
        .context("invalid configuration")?;
    print!("{}", toml::to_string_pretty(config)?);
    println!(
        "# node.cpus resolves to {shard_cpus:?}: {} shard(s)",
        shard_cpus.len()
    );
    Ok(())
}

/// Installs the global tracing subscriber: `RUST_LOG` if set, else `log.level`.
fn install_tracing(config: &Config) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directive) if !directive.trim().is_empty() => {
            EnvFilter::try_new(&directive).with_context(|| format!("RUST_LOG={directive:?}"))?
        }
        _ => EnvFilter::try_new(&config.log.level).context("log.level")?,
    };
    // rustls warns about each client's harmless quirks (an IP address sent as SNI, as
    // mosquitto_pub does); the broker logs what matters of a TLS failure itself.
    let filter = match "rustls=error".parse() {
        Ok(quiet) if !config.log.level.contains("rustls") => filter.add_directive(quiet),
        _ => filter,
    };
    match config.log.format {
        LogFormat::Text => {
            let builder = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            // `log.level` changes on a configuration reload (src/reload.rs).
            shardmq::reload::set_log_filter_hook(Box::new(move |level| {
                let filter = EnvFilter::try_new(level)?;
                let filter = match "rustls=error".parse() {
                    Ok(quiet) if !level.contains("rustls") => filter.add_directive(quiet),
                    _ => filter,
                };
                handle.reload(filter)?;
                Ok(())
            }));
        }
    }
    Ok(())
}
