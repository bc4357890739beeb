//! The embedded default: a private PostgreSQL cluster under `./data/postgres`, started from the
//! installed binaries when no database is configured and nothing answers on 127.0.0.1:5432.
//! PostgreSQL refuses to run as root, so as root the cluster runs as the `postgres` system user.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

pub struct EmbeddedPostgres {
    data_dir: PathBuf,
    bin_dir: PathBuf,
    run_as: Option<String>,
    port: u16,
    stopped: std::sync::atomic::AtomicBool,
}

const HOW_TO_GET_ONE: &str =
    "install PostgreSQL (e.g. `apt-get install postgresql`) so that initdb and \
pg_ctl are on PATH or under /usr/lib/postgresql/*/bin, or run `docker compose up` and point \
DATABASE_URL at it";

impl EmbeddedPostgres {
    /// Initializes the cluster if needed and starts it on a free loopback port.
    pub fn start(data_dir: &Path) -> anyhow::Result<EmbeddedPostgres> {
        let bin_dir = find_bin_dir().with_context(|| {
            format!("no database is configured, nothing answers on 127.0.0.1:5432, and no PostgreSQL binaries were found: {HOW_TO_GET_ONE}")
        })?;
        let data_dir =
            std::path::absolute(data_dir).context("resolving the embedded data folder")?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let run_as = (unsafe { libc::geteuid() } == 0).then(|| "postgres".to_string());
        let cluster = EmbeddedPostgres {
            data_dir,
            bin_dir,
            run_as,
            port: free_port()?,
            stopped: std::sync::atomic::AtomicBool::new(false),
        };
        std::fs::create_dir_all(&cluster.data_dir)
            .with_context(|| format!("creating {}", cluster.data_dir.display()))?;
        if let Some(user) = &cluster.run_as {
            run(Command::new("chown")
                .arg("-R")
                .arg(format!("{user}:"))
                .arg(&cluster.data_dir))
            .with_context(|| {
                format!(
                    "giving {} to the {user} user (it must exist when Kizuna runs as root)",
                    cluster.data_dir.display()
                )
            })?;
            let _ = run(Command::new("chmod").arg("700").arg(&cluster.data_dir));
        }
        if !cluster.data_dir.join("PG_VERSION").exists() {
            tracing::info!(dir = %cluster.data_dir.display(), "initializing the embedded PostgreSQL cluster");
            run(cluster
                .command("initdb")
                .arg("-D")
                .arg(&cluster.data_dir)
                .args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-locale",
                ]))
            .context("initdb failed")?;
        }
        cluster.pg_ctl_start()?;
        tracing::warn!(
            dir = %cluster.data_dir.display(),
            port = cluster.port,
            "no database configured and none on 127.0.0.1:5432: started an embedded PostgreSQL cluster; set DATABASE_URL for production"
        );
        Ok(cluster)
    }

    fn pg_ctl_start(&self) -> anyhow::Result<()> {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {}",
            self.port,
            self.data_dir.display()
        );
        run(self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(self.data_dir.join("server.log"))
            .args(["-w", "-t", "60", "-o", &options, "start"]))
        .context("pg_ctl start failed (see server.log in the data folder)")
    }

    /// Starts a stopped cluster again on the same port and data (for outage drills: clients
    /// holding the old URL reconnect without being told anything).
    pub fn start_again(&self) -> anyhow::Result<()> {
        self.pg_ctl_start()?;
        self.stopped
            .store(false, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// The loopback port the cluster listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/kizuna", self.port)
    }

    /// Stops the cluster (fast shutdown: open sessions are closed, data is flushed).
    pub fn stop(&self) {
        if self.stopped.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        match run(self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "fast", "-w", "stop"]))
        {
            Ok(()) => tracing::info!("stopped the embedded PostgreSQL cluster"),
            Err(e) => {
                tracing::error!(error = ?e, "stopping the embedded PostgreSQL cluster failed")
            }
        }
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin_dir.join(program);
        match &self.run_as {
            Some(user) => {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", user, "--"]).arg(path);
                cmd
            }
            None => Command::new(path),
        }
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let output = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !output.status.success() {
        bail!(
            "{cmd:?} exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// `initdb` on PATH, else the newest `/usr/lib/postgresql/*/bin`.
fn find_bin_dir() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                return Some(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}
