//! Private PostgreSQL clusters for tests, benchmarks and `stocksync demo`.
//!
//! A [`LocalCluster`] is made with the installed server binaries (`initdb`, `pg_ctl`) in a
//! fresh temporary directory, listens on 127.0.0.1 on a free port with `wal_level=logical`,
//! and is stopped and removed when dropped. When the current user is root the binaries run
//! as the `postgres` user through `runuser`, because the server refuses to run as root.
//!
//! The binaries are found in `$STOCKSYNC_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`,
//! else `$PATH`.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum LocalPgError {
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl) were not found; install them with \
         `apt-get install postgresql` or point STOCKSYNC_PG_BIN at their directory"
    )]
    BinariesNotFound,
    #[error("{step} failed: {detail}")]
    Command { step: String, detail: String },
    #[error("io error during {step}: {source}")]
    Io {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// How the cluster is set up.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Lines put before the default `trust` rules of `pg_hba.conf`, e.g.
    /// `host all scram_user 127.0.0.1/32 scram-sha-256`.
    pub hba_lines: Vec<String>,
    /// Extra `postgresql.conf` settings, e.g. `("max_slot_wal_keep_size", "64MB")`.
    pub settings: Vec<(String, String)>,
    /// Serve TLS with a self-signed certificate made at start (see [`LocalCluster::tls_root_cert`]).
    pub tls: bool,
    /// Serve TLS with a certificate for `localhost` (the name only) issued by this CA instead.
    pub tls_issuer: Option<TestCa>,
    /// `wal_level`; `logical` unless a test wants to see the preflight refuse.
    pub wal_level: String,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            hba_lines: Vec::new(),
            settings: Vec::new(),
            tls: false,
            tls_issuer: None,
            wal_level: "logical".into(),
        }
    }
}

/// A running private cluster; stopped (immediately) and deleted on drop.
#[derive(Debug)]
pub struct LocalCluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    running: AtomicBool,
}

static CLUSTER_COUNTER: AtomicU32 = AtomicU32::new(0);

impl LocalCluster {
    /// initdb + start. Takes a couple of seconds.
    pub fn start(options: ClusterOptions) -> Result<LocalCluster, LocalPgError> {
        let bin = find_bin_dir().ok_or(LocalPgError::BinariesNotFound)?;
        let as_postgres = is_root();
        let n = CLUSTER_COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("stocksync-pg-{}-{}", std::process::id(), n));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|source| LocalPgError::Io {
            step: "create cluster directory",
            source,
        })?;
        let port = free_port().map_err(|source| LocalPgError::Io {
            step: "find a free port",
            source,
        })?;
        let cluster = LocalCluster {
            dir,
            bin,
            port,
            as_postgres,
            running: AtomicBool::new(false),
        };
        if as_postgres {
            cluster.run_plain("chown", &["-R", "postgres:postgres", &cluster.dir_str()])?;
        }
        let data = cluster.data_dir();
        cluster.run_pg(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )?;
        let mut conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{dir}'\n\
             wal_level = {wal_level}\nmax_replication_slots = 20\nmax_wal_senders = 20\n\
             fsync = off\nfull_page_writes = off\nshared_buffers = 128MB\nmax_connections = 200\n\
             wal_sender_timeout = 60s\nlog_min_messages = warning\nlogging_collector = off\n",
            dir = cluster.dir_str(),
            wal_level = options.wal_level,
        );
        if let Some(ca) = &options.tls_issuer {
            let data = cluster.data_dir();
            ca.issue(
                "localhost",
                Path::new(&format!("{data}/server.crt")),
                Path::new(&format!("{data}/server.key")),
            )?;
            if as_postgres {
                cluster.run_plain(
                    "chown",
                    &[
                        "postgres:postgres",
                        &format!("{data}/server.crt"),
                        &format!("{data}/server.key"),
                    ],
                )?;
            }
            fs::copy(&ca.cert, cluster.tls_root_cert()).map_err(|source| LocalPgError::Io {
                step: "copy the CA certificate",
                source,
            })?;
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        } else if options.tls {
            cluster.make_certificate()?;
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        }
        for (key, value) in &options.settings {
            conf.push_str(&format!("{key} = {value}\n"));
        }
        cluster.append(&format!("{data}/postgresql.conf"), &conf)?;
        let mut hba = String::new();
        for line in &options.hba_lines {
            hba.push_str(line);
            hba.push('\n');
        }
        hba.push_str("local all all trust\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n");
        cluster.write(&format!("{data}/pg_hba.conf"), &hba)?;
        cluster
            .start_server()
            .map_err(|e| cluster.with_server_log(e))?;
        Ok(cluster)
    }

    /// `error` with the end of the server's log, which says why it did not start.
    fn with_server_log(&self, error: LocalPgError) -> LocalPgError {
        let log = fs::read_to_string(format!("{}/server.log", self.dir_str())).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(10).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        LocalPgError::Command {
            step: "start the server".into(),
            detail: format!("{error}; server log:\n{}", tail.join("\n")),
        }
    }

    /// Stops and deletes the cluster when process `pid` exits, even by SIGKILL: a detached
    /// watchdog shell polls the process. For clusters kept in statics (tests) or owned by a
    /// process that may be killed (the demo).
    pub fn remove_when_process_exits(&self, pid: u32) -> Result<(), LocalPgError> {
        let pg_ctl = self.bin.join("pg_ctl");
        let stop = if self.as_postgres {
            format!(
                "runuser -u postgres -- {} -D {} -m immediate stop",
                pg_ctl.display(),
                self.data_dir()
            )
        } else {
            format!(
                "{} -D {} -m immediate stop",
                pg_ctl.display(),
                self.data_dir()
            )
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf '{}'",
            self.dir_str()
        );
        Command::new("setsid")
            .args(["sh", "-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|source| LocalPgError::Io {
                step: "spawn the cluster watchdog",
                source,
            })?;
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Directory holding the data directory and the server log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`, a superuser URL.
    pub fn url(&self) -> String {
        self.url_for("postgres", "postgres")
    }

    pub fn url_for(&self, user: &str, database: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{database}", self.port)
    }

    /// Path of the CA certificate when started with TLS: the self-signed server certificate,
    /// or the issuer's certificate.
    pub fn tls_root_cert(&self) -> PathBuf {
        self.dir.join("root.crt")
    }

    /// Runs SQL with `psql` as the superuser (setup scripts with many statements).
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, LocalPgError> {
        let url = self.url_for("postgres", database);
        let out = Command::new(self.client_tool("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", &url, "-c", sql])
            .output()
            .map_err(|source| LocalPgError::Io {
                step: "run psql",
                source,
            })?;
        check("psql", out).map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// A client program (`psql`, `pg_recvlogical`): beside the server binaries when they have
    /// it, else the one on `PATH` (relocatable server builds ship only `initdb`, `pg_ctl` and
    /// `postgres`; any recent client speaks to every supported server).
    pub fn client_tool(&self, name: &str) -> PathBuf {
        let beside = self.bin.join(name);
        if beside.exists() {
            beside
        } else {
            PathBuf::from(name)
        }
    }

    /// Stops the server. `mode` is `fast` or `immediate` (a crash as far as the server knows).
    pub fn stop(&self, mode: &str) -> Result<(), LocalPgError> {
        if !self.running.load(Ordering::SeqCst) {
            return Ok(());
        }
        let data = self.data_dir();
        self.run_pg("pg_ctl", &["-D", &data, "-m", mode, "-w", "stop"])?;
        self.running.store(false, Ordering::SeqCst);
        Ok(())
    }

    pub fn start_server(&self) -> Result<(), LocalPgError> {
        let data = self.data_dir();
        let log = format!("{}/server.log", self.dir_str());
        self.run_pg(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-w", "-t", "60", "start"],
        )?;
        self.running.store(true, Ordering::SeqCst);
        Ok(())
    }

    pub fn restart(&self, mode: &str) -> Result<(), LocalPgError> {
        self.stop(mode)?;
        self.start_server()
    }

    /// The directory of the server binaries in use (also holds `pg_recvlogical`, `psql`).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    fn data_dir(&self) -> String {
        format!("{}/data", self.dir_str())
    }

    fn dir_str(&self) -> String {
        self.dir.to_string_lossy().into_owned()
    }

    fn make_certificate(&self) -> Result<(), LocalPgError> {
        let data = self.data_dir();
        let crt = format!("{data}/server.crt");
        let key = format!("{data}/server.key");
        self.run_pg(
            "openssl",
            &[
                "req",
                "-new",
                "-x509",
                "-days",
                "2",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
                "-out",
                &crt,
                "-keyout",
                &key,
            ],
        )?;
        self.run_pg("chmod", &["600", &key])?;
        fs::copy(&crt, self.tls_root_cert()).map_err(|source| LocalPgError::Io {
            step: "copy root certificate",
            source,
        })?;
        Ok(())
    }

    fn append(&self, path: &str, text: &str) -> Result<(), LocalPgError> {
        use std::io::Write;
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|source| LocalPgError::Io {
                step: "open postgresql.conf",
                source,
            })?;
        f.write_all(text.as_bytes())
            .map_err(|source| LocalPgError::Io {
                step: "write postgresql.conf",
                source,
            })
    }

    fn write(&self, path: &str, text: &str) -> Result<(), LocalPgError> {
        fs::write(path, text).map_err(|source| LocalPgError::Io {
            step: "write pg_hba.conf",
            source,
        })
    }

    /// Runs a server binary (or a plain tool) as the cluster's owner.
    fn run_pg(&self, program: &str, args: &[&str]) -> Result<Output, LocalPgError> {
        let path = if program == "openssl" || program == "chmod" {
            PathBuf::from(program)
        } else {
            self.bin.join(program)
        };
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let out = command
            .args(args)
            .current_dir(&self.dir)
            .output()
            .map_err(|source| LocalPgError::Io {
                step: "spawn a server binary",
                source,
            })?;
        check(program, out)
    }

    fn run_plain(&self, program: &str, args: &[&str]) -> Result<Output, LocalPgError> {
        let out = Command::new(program)
            .args(args)
            .output()
            .map_err(|source| LocalPgError::Io {
                step: "spawn a tool",
                source,
            })?;
        check(program, out)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let _ = self.stop("immediate");
        let _ = fs::remove_dir_all(&self.dir);
    }
}

static CA_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A throw-away certificate authority (openssl CLI) for TLS tests: it signs server
/// certificates for [`ClusterOptions::tls_issuer`]. Its few files stay in the temporary
/// directory.
#[derive(Debug, Clone)]
pub struct TestCa {
    /// The CA's certificate (PEM): what `sslrootcert` names.
    pub cert: PathBuf,
    key: PathBuf,
}

impl TestCa {
    /// A new CA named `name` (its subject CN).
    pub fn new(name: &str) -> Result<TestCa, LocalPgError> {
        let n = CA_COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("stocksync-ca-{}-{n}", std::process::id()));
        fs::create_dir_all(&dir).map_err(|source| LocalPgError::Io {
            step: "create CA directory",
            source,
        })?;
        let ca = TestCa {
            cert: dir.join("ca.crt"),
            key: dir.join("ca.key"),
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &ca.key.to_string_lossy(),
            "-out",
            &ca.cert.to_string_lossy(),
        ])?;
        Ok(ca)
    }

    /// Issues a server certificate for DNS name `host` only (no IP address: `verify-full`
    /// to 127.0.0.1 must fail), key mode 600.
    pub fn issue(&self, host: &str, cert: &Path, key: &Path) -> Result<(), LocalPgError> {
        // Next to the key, not in the CA's directory: clusters of parallel tests are issued
        // certificates at the same time, and a shared request file gave one of them another's
        // certificate ("key values mismatch" at start).
        let csr = key.with_extension("csr");
        let ext = key.with_extension("ext");
        fs::write(
            &ext,
            format!(
                "subjectAltName=DNS:{host}\nbasicConstraints=CA:FALSE\n\
                 keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
            ),
        )
        .map_err(|source| LocalPgError::Io {
            step: "write certificate extensions",
            source,
        })?;
        openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={host}"),
            "-keyout",
            &key.to_string_lossy(),
            "-out",
            &csr.to_string_lossy(),
        ])?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr.to_string_lossy(),
            "-CA",
            &self.cert.to_string_lossy(),
            "-CAkey",
            &self.key.to_string_lossy(),
            // A serial of its own per certificate (a shared serial file is another race).
            "-set_serial",
            &unique_serial().to_string(),
            "-days",
            "2",
            "-extfile",
            &ext.to_string_lossy(),
            "-out",
            &cert.to_string_lossy(),
        ])?;
        openssl_plain("chmod", &["600", &key.to_string_lossy()])
    }
}

fn openssl(args: &[&str]) -> Result<(), LocalPgError> {
    openssl_plain("openssl", args)
}

fn openssl_plain(program: &str, args: &[&str]) -> Result<(), LocalPgError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| LocalPgError::Io {
            step: "run openssl",
            source,
        })?;
    check(program, out).map(|_| ())
}

fn check(step: &str, out: Output) -> Result<Output, LocalPgError> {
    if out.status.success() {
        Ok(out)
    } else {
        Err(LocalPgError::Command {
            step: step.to_string(),
            detail: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            )
            .trim()
            .to_string(),
        })
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A certificate serial number no other certificate of these CAs has.
fn unique_serial() -> u64 {
    static ISSUED: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (u64::from(std::process::id()) << 40)
        | (u64::from(nanos & 0xff_ffff) << 16)
        | u64::from(ISSUED.fetch_add(1, Ordering::Relaxed) & 0xffff)
}

fn free_port() -> std::io::Result<u16> {
    // Bind to port 0 and release: racy in theory, fine for a private test cluster.
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    drop(listener);
    std::thread::sleep(Duration::from_millis(5));
    Ok(port)
}

/// Directory holding `initdb` and `pg_ctl`.
pub fn find_bin_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("STOCKSYNC_PG_BIN") {
        let dir = PathBuf::from(dir);
        if dir.join("initdb").exists() {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .find(|p| p.join("initdb").exists() && p.join("pg_ctl").exists())
    })
}
