//! The Kubernetes manifests (`deploy/k8s`, every overlay) checked against the real binaries.
//!
//! Reads `target/deploy/<overlay>.yaml` as written by `tests/deploy/validate.sh` when it is
//! newer than every file under `deploy/k8s`; otherwise renders the overlay itself with
//! `kubectl kustomize`. Then, for every overlay:
//!
//! * each router/executor container's command, args and env are accepted by the real binary
//!   (`--check-config`), with Secrets and fieldRefs replaced by placeholders and ConfigMap
//!   and Secret volumes materialised at their mount paths (Secret files hold the Secret's
//!   data when the overlay has it, otherwise plausible stand-ins: a token, or a real
//!   certificate, key and CA generated for the run); every Secret file a setting names
//!   really reaches the binary (junk in it fails `--check-config`);
//! * the policy ConfigMap is accepted by the router and mounted as a directory;
//! * container ports, probe ports, Service target ports and the listen addresses agree
//!   (the health port included), and the addresses one component uses to reach another
//!   name a real Service port;
//! * readiness probes ask for the services' health names, the executor's liveness probe
//!   does not depend on Redis, gRPC probes of a TLS port go to the plaintext health port,
//!   and NetworkPolicies admit the probes from any source (the kubelet is on the node);
//! * both services require the bearer token from a Secret file, the executor presents the
//!   router's token and, when the router serves TLS, dials `https://` trusting a CA from a
//!   Secret and checking a name of the router's Service; every Secret the overlay does not
//!   create is one docs/OPERATIONS.md tells the operator to create;
//! * every workload has resource requests and limits and a restricted security context;
//! * the executor's termination grace period covers its preStop sleep and shutdown grace;
//! * the rollout controller runs once, replaces the key of the ConfigMap the routers
//!   mount, may do nothing else through the API (its Role), gets its credentials where
//!   in-cluster clients look for them, and the real binary accepts its settings.

use serde::Deserialize as _;
use serde_yaml::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

/// Placeholder for every Secret value: URL-safe, since the executor splices the Redis
/// password into `REDIS_URL`.
const SECRET_PLACEHOLDER: &str = "placeholder-secret";

/// Stand-in for a Secret-backed token file: as long as a real token.
const PLACEHOLDER_TOKEN: &str = "placeholder-token-0123456789abcdef0123456789abcdef";

/// UID of the distroless `nonroot` user the service image runs as.
const SERVICE_UID: i64 = 65532;

/// One rendered overlay.
struct Overlay {
    name: String,
    docs: Vec<Value>,
}

impl Overlay {
    fn objects<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.docs
            .iter()
            .filter(move |d| str_at(d, &["kind"]) == Some(kind))
    }

    fn object(&self, kind: &str, name: &str) -> Option<&Value> {
        self.docs.iter().find(|d| {
            str_at(d, &["kind"]) == Some(kind) && str_at(d, &["metadata", "name"]) == Some(name)
        })
    }

    /// Deployments and StatefulSets.
    fn workloads(&self) -> impl Iterator<Item = &Value> {
        self.docs.iter().filter(|d| {
            matches!(
                str_at(d, &["kind"]),
                Some("Deployment" | "StatefulSet" | "DaemonSet")
            )
        })
    }

    /// The workload running `binary` (`router-service` or `executor-service`).
    fn workload_running(&self, binary: &str) -> Option<(&Value, &Value)> {
        self.workloads().find_map(|w| {
            containers(w)
                .find(|c| service_binary(c) == Some(binary))
                .map(|c| (w, c))
        })
    }

    /// A ConfigMap's `data` as strings.
    fn config_map_data(&self, name: &str) -> Option<BTreeMap<String, String>> {
        let cm = self.object("ConfigMap", name)?;
        let data = cm.get("data")?.as_mapping()?;
        Some(
            data.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string())))
                .collect(),
        )
    }
}

fn overlays() -> &'static [Overlay] {
    static OVERLAYS: OnceLock<Vec<Overlay>> = OnceLock::new();
    OVERLAYS.get_or_init(load_overlays)
}

fn load_overlays() -> Vec<Overlay> {
    let root = test_support::workspace_root();
    let k8s = root.join("deploy/k8s");
    let overlays_dir = k8s.join("overlays");
    let newest_source = newest_mtime(&k8s);
    let mut names: Vec<String> = std::fs::read_dir(&overlays_dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", overlays_dir.display()))
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("kustomization.yaml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(
        !names.is_empty(),
        "no overlays under {}",
        overlays_dir.display()
    );
    names
        .into_iter()
        .map(|name| {
            let rendered = root.join("target/deploy").join(format!("{name}.yaml"));
            let fresh = std::fs::metadata(&rendered)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= newest_source);
            let text = if fresh {
                std::fs::read_to_string(&rendered)
                    .unwrap_or_else(|e| panic!("cannot read {}: {e}", rendered.display()))
            } else {
                kustomize(&overlays_dir.join(&name))
            };
            let docs = serde_yaml::Deserializer::from_str(&text)
                .map(|doc| {
                    Value::deserialize(doc)
                        .unwrap_or_else(|e| panic!("overlay {name}: invalid YAML: {e}"))
                })
                .filter(|v: &Value| !v.is_null())
                .collect();
            Overlay { name, docs }
        })
        .collect()
}

fn kustomize(dir: &Path) -> String {
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "the rendered manifests are missing or older than deploy/k8s, and `kubectl` \
                 cannot be run to render them ({e}). Install kubectl, or run \
                 `bash tests/deploy/validate.sh`, which installs it and renders target/deploy/."
            )
        });
    assert!(
        output.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("kubectl kustomize printed non-UTF-8")
}

fn newest_mtime(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(path);
            } else if let Ok(t) = meta.modified() {
                newest = newest.max(t);
            }
        }
    }
    newest
}

// ---------------------------------------------------------------------------------------
// YAML helpers

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, key| v.get(*key))
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(v, path)?.as_str()
}

fn seq<'a>(v: &'a Value, path: &[&str]) -> impl Iterator<Item = &'a Value> + 'a {
    at(v, path)
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
}

fn name_of(v: &Value) -> &str {
    str_at(v, &["metadata", "name"])
        .or_else(|| str_at(v, &["name"]))
        .unwrap_or("?")
}

fn pod_spec(workload: &Value) -> &Value {
    at(workload, &["spec", "template", "spec"]).expect("workload without a pod template")
}

fn containers(workload: &Value) -> impl Iterator<Item = &Value> {
    seq(workload, &["spec", "template", "spec", "containers"])
}

/// `router-service` / `executor-service` when the container runs one of them.
fn service_binary(container: &Value) -> Option<&str> {
    let program = seq(container, &["command"]).next()?.as_str()?;
    let file = program.rsplit('/').next()?;
    matches!(file, "router-service" | "executor-service").then_some(file)
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    let Some(selector) = selector.as_mapping() else {
        return false;
    };
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Container ports, name -> number.
fn container_ports(container: &Value) -> BTreeMap<String, i64> {
    seq(container, &["ports"])
        .filter_map(|p| {
            Some((
                str_at(p, &["name"]).unwrap_or("").to_string(),
                at(p, &["containerPort"])?.as_i64()?,
            ))
        })
        .collect()
}

/// Resolves a port given by number or by name against the container's ports.
fn resolve_port(port: &Value, ports: &BTreeMap<String, i64>) -> Option<i64> {
    match port {
        Value::Number(n) => n.as_i64().filter(|n| ports.values().any(|p| p == n)),
        Value::String(s) => ports.get(s).copied(),
        _ => None,
    }
}

fn port_of(addr: &str) -> Option<i64> {
    addr.rsplit(':').next()?.trim_end_matches('/').parse().ok()
}

/// `host` and `port` of `scheme://[user@]host:port[/...]`.
fn host_port(url: &str) -> Option<(String, i64)> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = hostport.rsplit_once(':')?;
    Some((host.to_string(), port.parse().ok()?))
}

/// humantime-style durations as the binaries accept them: `20s`, `500ms`, `1m30s`.
fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        total += match unit {
            "ms" => Duration::from_millis(n),
            "s" | "sec" => Duration::from_secs(n),
            "m" | "min" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            _ => return None,
        };
    }
    Some(total)
}

// ---------------------------------------------------------------------------------------
// A container's environment and command line, as the kubelet would give them

/// Expands `$(NAME)` from `vars` the way the kubelet does: `$$` escapes, unknown names stay.
fn expand(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(inner) = tail.strip_prefix("$(")
            && let Some(end) = inner.find(')')
            && let Some(value) = vars.get(&inner[..end])
        {
            out.push_str(value);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// Whether `text` still holds a `$(NAME)` reference.
fn has_var_reference(text: &str) -> bool {
    text.match_indices("$(").any(|(i, _)| {
        let name: String = text[i + 2..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        !name.is_empty() && text[i + 2 + name.len()..].starts_with(')')
    })
}

/// The container's environment with Secrets and fieldRefs replaced by placeholders.
fn container_env(
    overlay: &Overlay,
    workload: &Value,
    container: &Value,
) -> Result<BTreeMap<String, String>, String> {
    let namespace = str_at(workload, &["metadata", "namespace"]).unwrap_or("default");
    let pod_name = format!("{}-0", name_of(workload));
    let mut vars = BTreeMap::new();
    // The kubelet sets HOSTNAME to the pod name (the executor's default worker id).
    vars.insert("HOSTNAME".to_string(), pod_name.clone());
    if at(container, &["envFrom"]).is_some() {
        return Err("envFrom is not supported by this check; list variables in env".into());
    }
    for var in seq(container, &["env"]) {
        let name = str_at(var, &["name"]).ok_or("env entry without a name")?;
        let value = if let Some(v) = at(var, &["value"]) {
            let raw = match v {
                Value::String(s) => s.clone(),
                other => return Err(format!("env {name}: value must be a string, got {other:?}")),
            };
            expand(&raw, &vars)
        } else if let Some(from) = at(var, &["valueFrom"]) {
            if at(from, &["secretKeyRef"]).is_some() {
                SECRET_PLACEHOLDER.to_string()
            } else if let Some(path) = str_at(from, &["fieldRef", "fieldPath"]) {
                match path {
                    "metadata.name" => pod_name.clone(),
                    "metadata.namespace" => namespace.to_string(),
                    "status.podIP" | "status.hostIP" => "10.0.0.10".to_string(),
                    "spec.nodeName" => "node-1".to_string(),
                    "spec.serviceAccountName" => "default".to_string(),
                    other => format!("placeholder-{other}"),
                }
            } else if let Some(cm) = at(from, &["configMapKeyRef"]) {
                let cm_name = str_at(cm, &["name"]).unwrap_or("");
                let key = str_at(cm, &["key"]).unwrap_or("");
                overlay
                    .config_map_data(cm_name)
                    .and_then(|d| d.get(key).cloned())
                    .ok_or(format!("env {name}: ConfigMap {cm_name} has no key {key}"))?
            } else if at(from, &["resourceFieldRef"]).is_some() {
                "1".to_string()
            } else {
                return Err(format!("env {name}: unsupported valueFrom {from:?}"));
            }
        } else {
            String::new()
        };
        vars.insert(name.to_string(), value);
    }
    Ok(vars)
}

/// ConfigMap volumes of the container: (mount path, ConfigMap name, subPath used).
fn config_map_mounts<'a>(workload: &'a Value, container: &'a Value) -> Vec<(String, String, bool)> {
    let spec = pod_spec(workload);
    seq(container, &["volumeMounts"])
        .filter_map(|m| {
            let volume = str_at(m, &["name"])?;
            let vol = seq(spec, &["volumes"]).find(|v| str_at(v, &["name"]) == Some(volume))?;
            let cm = str_at(vol, &["configMap", "name"])?;
            Some((
                str_at(m, &["mountPath"])?.to_string(),
                cm.to_string(),
                at(m, &["subPath"]).is_some(),
            ))
        })
        .collect()
}

/// A Secret volume as one container mounts it.
struct SecretMount {
    mount: String,
    secret: String,
    /// `items` of the volume: key -> path under the mount; `None` projects every key.
    items: Option<Vec<(String, String)>>,
    sub_path: bool,
    read_only: bool,
    optional: bool,
}

fn secret_mounts(workload: &Value, container: &Value) -> Vec<SecretMount> {
    let spec = pod_spec(workload);
    seq(container, &["volumeMounts"])
        .filter_map(|m| {
            let volume = str_at(m, &["name"])?;
            let vol = seq(spec, &["volumes"]).find(|v| str_at(v, &["name"]) == Some(volume))?;
            let secret = at(vol, &["secret"])?;
            let items = at(secret, &["items"]).map(|_| {
                seq(secret, &["items"])
                    .filter_map(|i| {
                        Some((
                            str_at(i, &["key"])?.to_string(),
                            str_at(i, &["path"])?.to_string(),
                        ))
                    })
                    .collect()
            });
            Some(SecretMount {
                mount: str_at(m, &["mountPath"])?.trim_end_matches('/').to_string(),
                secret: str_at(secret, &["secretName"])?.to_string(),
                items,
                sub_path: at(m, &["subPath"]).is_some(),
                read_only: at(m, &["readOnly"]).and_then(Value::as_bool) == Some(true),
                optional: at(secret, &["optional"]).and_then(Value::as_bool) == Some(true),
            })
        })
        .collect()
}

/// A setting as the binary sees it: `--flag=value` / `--flag value` in the args, else the
/// environment variable.
fn setting(
    env: &BTreeMap<String, String>,
    container: &Value,
    flag: &str,
    var: &str,
) -> Option<String> {
    let args: Vec<&str> = seq(container, &["args"])
        .filter_map(Value::as_str)
        .collect();
    let from_args = args.iter().enumerate().find_map(|(i, a)| {
        if let Some(v) = a.strip_prefix(&format!("{flag}=")) {
            return Some(expand(v, env));
        }
        (*a == flag).then(|| args.get(i + 1).map(|v| expand(v, env)))?
    });
    from_args
        .or_else(|| env.get(var).cloned())
        .filter(|v| !v.trim().is_empty())
}

/// The Secret (name, key) behind a file path in the container, if it is one.
fn secret_file_source(workload: &Value, container: &Value, path: &str) -> Option<(String, String)> {
    secret_mounts(workload, container)
        .into_iter()
        .find_map(|m| {
            let rel = path.strip_prefix(&format!("{}/", m.mount))?;
            let key = match &m.items {
                None => rel.to_string(),
                Some(items) => items.iter().find(|(_, p)| p == rel)?.0.clone(),
            };
            Some((m.secret, key))
        })
}

/// A Secret's data from the overlay (base64 `data` decoded, `stringData` as is).
fn secret_data(overlay: &Overlay, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
    let secret = overlay.object("Secret", name)?;
    let mut out = BTreeMap::new();
    for (k, v) in at(secret, &["data"])
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
    {
        out.insert(k.as_str()?.to_string(), base64_decode(v.as_str()?)?);
    }
    for (k, v) in at(secret, &["stringData"])
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
    {
        out.insert(k.as_str()?.to_string(), v.as_str()?.as_bytes().to_vec());
    }
    Some(out)
}

/// Standard base64 with padding, as Kubernetes stores Secret data.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
    {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(v);
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    Some(out)
}

/// Stand-in content of a Secret file the overlay does not hold, by its key: the TLS
/// Secret's files are real PEM (the binaries parse them), anything else is a token.
fn placeholder_secret_file(key: &str, pki: &test_support::TestPki) -> Result<Vec<u8>, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    match key {
        "ca.crt" => read(&pki.ca),
        "tls.crt" => read(&pki.server_cert),
        "tls.key" => read(&pki.server_key),
        k if k.ends_with(".key") => read(&pki.server_key),
        k if k.ends_with(".crt") || k.ends_with(".pem") => read(&pki.server_cert),
        _ => Ok(format!("{PLACEHOLDER_TOKEN}\n").into_bytes()),
    }
}

/// A container's command line and environment, ready to run on this machine: ConfigMap
/// and Secret volumes are written to a temporary directory and paths under their mount
/// points rewritten to it.
struct Invocation {
    program: PathBuf,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    /// Local copies of the Secret files that a setting names.
    secret_files: Vec<PathBuf>,
    _scratch: tempfile::TempDir,
    _pki: test_support::TestPki,
}

fn invocation(
    overlay: &Overlay,
    workload: &Value,
    container: &Value,
) -> Result<Invocation, String> {
    let binary = service_binary(container).ok_or("not a taskrouter service container")?;
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut rewrites: Vec<(String, String)> = Vec::new();
    for (i, (mount, cm, _)) in config_map_mounts(workload, container)
        .into_iter()
        .enumerate()
    {
        let data = overlay.config_map_data(&cm).ok_or(format!(
            "volume mounts ConfigMap {cm}, which is not in the overlay"
        ))?;
        let dir = scratch.path().join(format!("cm{i}"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        for (key, value) in data {
            std::fs::write(dir.join(key), value).map_err(|e| e.to_string())?;
        }
        rewrites.push((mount, dir.to_string_lossy().into_owned()));
    }
    // Secret files: the overlay's data when it has the Secret, else stand-ins for the
    // files the settings name (prod's Secrets are created out of band).
    let pki = test_support::TestPki::generate();
    let raw_env = container_env(overlay, workload, container)?;
    let raw_args: Vec<String> = seq(container, &["command"])
        .chain(seq(container, &["args"]))
        .filter_map(Value::as_str)
        .map(|a| expand(a, &raw_env))
        .collect();
    let named_paths: Vec<&str> = raw_env
        .values()
        .map(String::as_str)
        .chain(
            raw_args
                .iter()
                .map(|a| a.split_once('=').map_or(a.as_str(), |(_, v)| v)),
        )
        .collect();
    let mut secret_files = Vec::new();
    for (i, m) in secret_mounts(workload, container).into_iter().enumerate() {
        let dir = scratch.path().join(format!("secret{i}"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let data = secret_data(overlay, &m.secret);
        let mut named: Vec<&str> = named_paths
            .iter()
            .filter_map(|p| p.strip_prefix(&format!("{}/", m.mount)))
            .collect();
        named.sort_unstable();
        named.dedup();
        // (key, path under the mount) of every file the volume would hold.
        let files: Vec<(String, String)> = match (&m.items, &data) {
            (Some(items), _) => items.clone(),
            (None, Some(data)) => data.keys().map(|k| (k.clone(), k.clone())).collect(),
            (None, None) => named
                .iter()
                .map(|k| (k.to_string(), k.to_string()))
                .collect(),
        };
        for (key, rel) in files {
            let content = match &data {
                Some(data) => match data.get(&key) {
                    Some(bytes) => bytes.clone(),
                    None => continue,
                },
                None => placeholder_secret_file(&key, &pki)?,
            };
            let path = dir.join(&rel);
            std::fs::write(&path, content).map_err(|e| e.to_string())?;
            if named.contains(&rel.as_str()) {
                secret_files.push(path);
            }
        }
        rewrites.push((m.mount, dir.to_string_lossy().into_owned()));
    }
    // Longest mount path first, so nested mounts win.
    rewrites.sort_by_key(|(mount, _)| std::cmp::Reverse(mount.len()));
    let rewrite = |value: &str| -> String {
        for (mount, local) in &rewrites {
            let mount = mount.trim_end_matches('/');
            if value == mount || value.starts_with(&format!("{mount}/")) {
                return format!("{local}{}", &value[mount.len()..]);
            }
            if let Some((flag, path)) = value.split_once('=')
                && (path == mount || path.starts_with(&format!("{mount}/")))
            {
                return format!("{flag}={local}{}", &path[mount.len()..]);
            }
        }
        value.to_string()
    };
    let env: BTreeMap<String, String> = container_env(overlay, workload, container)?
        .into_iter()
        .map(|(k, v)| {
            let v = rewrite(&v);
            (k, v)
        })
        .collect();
    let args = seq(container, &["command"])
        .skip(1)
        .chain(seq(container, &["args"]))
        .map(|a| {
            a.as_str()
                .map(|s| rewrite(&expand(s, &env)))
                .ok_or(format!("non-string argument {a:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // The kubelet leaves a reference to an unknown (or later-defined) variable as literal
    // text, which the binaries would accept as part of a value: catch it here.
    let unresolved = env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(args.iter().map(|a| ("args", a.as_str())))
        .find(|(_, v)| has_var_reference(v));
    if let Some((name, value)) = unresolved {
        return Err(format!(
            "{name}: unresolved $(VAR) reference in {value:?} (variables must be defined before use)"
        ));
    }
    Ok(Invocation {
        program: test_support::binary_path(binary),
        args,
        env,
        secret_files,
        _scratch: scratch,
        _pki: pki,
    })
}

/// Runs `program` with exactly `env` (nothing inherited), giving up after 30 s.
fn run(program: &Path, args: &[String], env: &BTreeMap<String, String>) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("collect output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "{} {args:?} did not exit within 30 s: {}",
                program.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn describe(out: &Output) -> String {
    format!(
        "{} | stdout: {} | stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

fn assert_no_failures(what: &str, failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{what}:\n  - {}",
        failures.join("\n  - ")
    );
}

// ---------------------------------------------------------------------------------------
// Tests

#[test]
fn every_overlay_runs_both_services() {
    let mut failures = Vec::new();
    for o in overlays() {
        for binary in ["router-service", "executor-service"] {
            if o.workload_running(binary).is_none() {
                failures.push(format!("{}: no workload runs {binary}", o.name));
            }
        }
        for (kind, name) in [
            ("StatefulSet", "redis"),
            ("Deployment", "otel-collector"),
            ("ConfigMap", "router-policy"),
        ] {
            if o.object(kind, name).is_none() {
                failures.push(format!("{}: no {kind} {name}", o.name));
            }
        }
    }
    assert_no_failures("missing components", failures);
}

#[test]
fn service_containers_pass_check_config() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for o in overlays() {
        for w in o.workloads() {
            for c in containers(w).filter(|c| service_binary(c).is_some()) {
                let label = format!("{}: {}/{}", o.name, name_of(w), name_of(c));
                checked += 1;
                let inv = match invocation(o, w, c) {
                    Ok(inv) => inv,
                    Err(e) => {
                        failures.push(format!("{label}: {e}"));
                        continue;
                    }
                };
                let mut args = inv.args.clone();
                args.push("--check-config".into());
                let out = run(&inv.program, &args, &inv.env);
                let stdout = String::from_utf8_lossy(&out.stdout);
                if !out.status.success() || !stdout.starts_with("config ok") {
                    failures.push(format!("{label}: {args:?} -> {}", describe(&out)));
                }

                // The same invocation with one bad setting must fail with exit code 2,
                // proving the manifest's settings really reached the binary.
                let mut bad_env = inv.env.clone();
                bad_env.insert("TASKROUTER_METRICS_LISTEN".into(), "not-an-address".into());
                let bad_args: Vec<String> = args
                    .iter()
                    .filter(|a| !a.starts_with("--metrics-listen"))
                    .cloned()
                    .collect();
                let out = run(&inv.program, &bad_args, &bad_env);
                if out.status.code() != Some(2) {
                    failures.push(format!(
                        "{label}: a bad TASKROUTER_METRICS_LISTEN was not rejected: {}",
                        describe(&out)
                    ));
                }

                // Likewise every Secret file a setting names: junk in it must be refused,
                // or the file is mounted but never read. The token file at least is one.
                if inv.secret_files.is_empty() {
                    failures.push(format!("{label}: no setting names a Secret file"));
                }
                for file in &inv.secret_files {
                    let saved = std::fs::read(file).expect("read secret file");
                    std::fs::write(file, "x\n").expect("write junk");
                    let out = run(&inv.program, &args, &inv.env);
                    std::fs::write(file, saved).expect("restore secret file");
                    if out.status.code() != Some(2) {
                        failures.push(format!(
                            "{label}: junk in {} was not rejected: {}",
                            file.file_name().unwrap_or_default().to_string_lossy(),
                            describe(&out)
                        ));
                    }
                }
            }
        }
    }
    assert_no_failures("containers rejected by --check-config", failures);
    assert!(
        checked >= 2 * overlays().len(),
        "checked only {checked} containers"
    );
}

#[test]
fn policy_config_map_is_accepted_by_the_router_and_mounted_as_a_directory() {
    let mut failures = Vec::new();
    for o in overlays() {
        let Some(data) = o.config_map_data("router-policy") else {
            failures.push(format!("{}: no ConfigMap router-policy with data", o.name));
            continue;
        };
        let Some(policy) = data.get("policy.toml") else {
            failures.push(format!("{}: router-policy has no policy.toml", o.name));
            continue;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("policy.toml");
        std::fs::write(&file, policy).expect("write policy");
        let args = vec![
            "--check-config".to_string(),
            "--policy".to_string(),
            file.to_string_lossy().into_owned(),
        ];
        let out = run(
            &test_support::binary_path("router-service"),
            &args,
            &BTreeMap::new(),
        );
        if !out.status.success() {
            failures.push(format!(
                "{}: the router rejects router-policy/policy.toml: {}",
                o.name,
                describe(&out)
            ));
        }

        // The mount must be a directory (not subPath, which never sees updates), and the
        // router must be pointed at a file inside it.
        let Some((w, c)) = o.workload_running("router-service") else {
            continue;
        };
        let mounts: Vec<_> = config_map_mounts(w, c)
            .into_iter()
            .filter(|(_, cm, _)| cm == "router-policy")
            .collect();
        let [(mount, _, sub_path)] = mounts.as_slice() else {
            failures.push(format!(
                "{}: the router mounts router-policy {} times, expected once",
                o.name,
                mounts.len()
            ));
            continue;
        };
        if *sub_path {
            failures.push(format!(
                "{}: router-policy is mounted with subPath; ConfigMap updates would never arrive",
                o.name
            ));
        }
        let env = container_env(o, w, c).unwrap_or_default();
        let flag = seq(c, &["args"])
            .filter_map(Value::as_str)
            .find_map(|a| a.strip_prefix("--policy=").map(str::to_string));
        let path = flag.or_else(|| env.get("ROUTER_POLICY").cloned());
        let expected = format!("{}/policy.toml", mount.trim_end_matches('/'));
        if path.as_deref() != Some(expected.as_str()) {
            failures.push(format!(
                "{}: the router's policy path is {path:?}, expected {expected}",
                o.name
            ));
        }
    }
    assert_no_failures("policy ConfigMap", failures);
}

#[test]
fn ports_probes_services_and_addresses_agree() {
    let mut failures = Vec::new();
    for o in overlays() {
        let f = &mut failures;
        let mut err = |msg: String| f.push(format!("{}: {msg}", o.name));

        // Probes and annotations against each container's ports.
        for w in o.workloads() {
            let annotations = at(w, &["spec", "template", "metadata", "annotations"]);
            for c in containers(w) {
                let label = format!("{}/{}", name_of(w), name_of(c));
                let ports = container_ports(c);
                for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
                    let Some(p) = at(c, &[probe]) else { continue };
                    for kind in ["grpc", "tcpSocket", "httpGet"] {
                        let Some(port) = at(p, &[kind, "port"]) else {
                            continue;
                        };
                        if kind == "grpc" && !port.is_number() {
                            err(format!("{label}: {probe}.grpc.port must be a number"));
                        }
                        if resolve_port(port, &ports).is_none() {
                            err(format!(
                                "{label}: {probe}.{kind}.port {port:?} is not a container port ({ports:?})"
                            ));
                        }
                    }
                }
                if service_binary(c).is_none() {
                    continue;
                }
                let env = container_env(o, w, c).unwrap_or_default();
                let listen_var = match service_binary(c) {
                    Some("router-service") => "ROUTER_LISTEN",
                    _ => "EXECUTOR_LISTEN",
                };
                let listen = env.get(listen_var).and_then(|a| port_of(a));
                if listen.is_none() || listen != ports.get("grpc").copied() {
                    err(format!(
                        "{label}: {listen_var} port {listen:?} differs from the `grpc` container port {:?}",
                        ports.get("grpc")
                    ));
                }
                let metrics = env
                    .get("TASKROUTER_METRICS_LISTEN")
                    .and_then(|a| port_of(a));
                if metrics.is_none() || metrics != ports.get("metrics").copied() {
                    err(format!(
                        "{label}: TASKROUTER_METRICS_LISTEN port {metrics:?} differs from the `metrics` container port {:?}",
                        ports.get("metrics")
                    ));
                }
                // The health port, when on, is the `health` container port and not the
                // gRPC one (the binary would fail to bind it twice).
                let health = setting(&env, c, "--health-listen", "TASKROUTER_HEALTH_LISTEN")
                    .map(|a| port_of(&a));
                match (health, ports.get("health").copied()) {
                    (None, None) => {}
                    (Some(h), declared) if h.is_some() && h == declared && h != listen => {}
                    (h, declared) => err(format!(
                        "{label}: TASKROUTER_HEALTH_LISTEN port {:?} differs from the `health` container port {declared:?} (or equals the gRPC port)",
                        h.flatten()
                    )),
                }
                let scrape_port = annotations
                    .and_then(|a| str_at(a, &["prometheus.io/port"]))
                    .and_then(|p| p.parse::<i64>().ok());
                if scrape_port.is_none() || scrape_port != metrics {
                    err(format!(
                        "{label}: prometheus.io/port {scrape_port:?} differs from the metrics port {metrics:?}"
                    ));
                }
                if annotations.and_then(|a| str_at(a, &["prometheus.io/scrape"])) != Some("true") {
                    err(format!(
                        "{label}: pod is not annotated prometheus.io/scrape: \"true\""
                    ));
                }
            }
        }

        // Every Service selects a workload and targets ports it has.
        for svc in o.objects("Service") {
            let selector = at(svc, &["spec", "selector"])
                .cloned()
                .unwrap_or(Value::Null);
            let selected: Vec<&Value> = o
                .workloads()
                .filter(|w| {
                    at(w, &["spec", "template", "metadata", "labels"])
                        .is_some_and(|l| labels_match(&selector, l))
                })
                .collect();
            if selected.is_empty() {
                err(format!("Service {} selects no workload", name_of(svc)));
            }
            for port in seq(svc, &["spec", "ports"]) {
                let target = at(port, &["targetPort"])
                    .or_else(|| at(port, &["port"]))
                    .cloned()
                    .unwrap_or(Value::Null);
                for w in &selected {
                    let found =
                        containers(w).any(|c| resolve_port(&target, &container_ports(c)).is_some());
                    if !found {
                        err(format!(
                            "Service {} targetPort {target:?} is not a port of {}",
                            name_of(svc),
                            name_of(w)
                        ));
                    }
                }
            }
        }

        // The addresses one component uses for another name a Service and its port.
        let service_port = |host: &str, port: i64| {
            let svc_name = host.split('.').next().unwrap_or(host);
            o.object("Service", svc_name).is_some_and(|s| {
                seq(s, &["spec", "ports"])
                    .any(|p| at(p, &["port"]).and_then(Value::as_i64) == Some(port))
            })
        };
        for w in o.workloads() {
            for c in containers(w).filter(|c| service_binary(c).is_some()) {
                let env = container_env(o, w, c).unwrap_or_default();
                let vars: &[&str] = match service_binary(c) {
                    Some("executor-service") => {
                        &["ROUTER_ADDR", "REDIS_URL", "OTEL_EXPORTER_OTLP_ENDPOINT"]
                    }
                    _ => &["OTEL_EXPORTER_OTLP_ENDPOINT"],
                };
                for var in vars {
                    let Some(url) = env.get(*var).filter(|u| !u.is_empty()) else {
                        err(format!("{}/{}: {var} is not set", name_of(w), name_of(c)));
                        continue;
                    };
                    match host_port(url) {
                        Some((host, port)) if service_port(&host, port) => {}
                        _ => err(format!(
                            "{}/{}: {var} does not name a Service port in the overlay",
                            name_of(w),
                            name_of(c)
                        )),
                    }
                }
            }
        }
    }
    assert_no_failures("ports and addresses", failures);
}

#[test]
fn probes_use_the_health_service_names() {
    let mut failures = Vec::new();
    for o in overlays() {
        for (binary, service) in [
            ("router-service", router_service::SERVICE_NAME),
            ("executor-service", executor_service::SERVICE_NAME),
        ] {
            let Some((w, c)) = o.workload_running(binary) else {
                continue;
            };
            let label = format!("{}: {}", o.name, name_of(w));
            let readiness = str_at(c, &["readinessProbe", "grpc", "service"]);
            if readiness != Some(service) {
                failures.push(format!(
                    "{label}: readiness must be a gRPC probe of {service:?}, found {readiness:?}"
                ));
            }
            let liveness = at(c, &["livenessProbe"]);
            if liveness.is_none() {
                failures.push(format!("{label}: no liveness probe"));
            }
            // The kubelet's gRPC probes speak neither TLS nor tokens: with TLS on the
            // gRPC port they must go to the plaintext health port.
            let env = container_env(o, w, c).unwrap_or_default();
            if setting(&env, c, "--tls-cert", "TASKROUTER_TLS_CERT").is_some() {
                let health = setting(&env, c, "--health-listen", "TASKROUTER_HEALTH_LISTEN")
                    .and_then(|a| port_of(&a));
                for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
                    let Some(port) = at(c, &[probe, "grpc", "port"]) else {
                        continue;
                    };
                    if health.is_none() || port.as_i64() != health {
                        failures.push(format!(
                            "{label}: {probe} is a gRPC probe of port {:?}, but the gRPC port serves TLS; probe the --health-listen port ({health:?})",
                            port.as_i64()
                        ));
                    }
                }
            }
            // The executor reports both its service and "" NOT_SERVING while Redis is
            // down; a liveness probe on either would restart every executor in an outage.
            if binary == "executor-service"
                && let Some(svc) = liveness.and_then(|l| at(l, &["grpc"]))
            {
                let name = str_at(svc, &["service"]).unwrap_or("");
                if name.is_empty() || name == service {
                    failures.push(format!(
                        "{label}: liveness probes gRPC health {name:?}, which turns NOT_SERVING when Redis is down"
                    ));
                }
            }
        }
    }
    assert_no_failures("health probes", failures);
}

/// Whether `policy` selects pods labelled `labels` (an empty selector selects every pod).
/// `matchExpressions` are not evaluated: such a policy is assumed to select the pod, so
/// it cannot hide a restriction from the check.
fn policy_selects(policy: &Value, labels: &Value) -> bool {
    let selector = at(policy, &["spec", "podSelector"]);
    if at(policy, &["spec", "podSelector", "matchExpressions"]).is_some() {
        return true;
    }
    match selector
        .and_then(|s| at(s, &["matchLabels"]))
        .and_then(Value::as_mapping)
    {
        None => true,
        Some(m) if m.is_empty() => true,
        Some(m) => m.iter().all(|(k, v)| labels.get(k) == Some(v)),
    }
}

fn restricts_ingress(policy: &Value) -> bool {
    match at(policy, &["spec", "policyTypes"]) {
        Some(types) => types
            .as_sequence()
            .is_some_and(|t| t.iter().any(|t| t.as_str() == Some("Ingress"))),
        None => true,
    }
}

/// Whether an ingress rule lets any source reach the container port `name`/`number`.
fn admits_any_source(rule: &Value, name: &str, number: i64) -> bool {
    let from_anywhere = seq(rule, &["from"]).next().is_none();
    let ports: Vec<&Value> = seq(rule, &["ports"]).collect();
    let port_ok = ports.is_empty()
        || ports.iter().any(|p| {
            let tcp = str_at(p, &["protocol"]).is_none_or(|proto| proto == "TCP");
            let matches = match at(p, &["port"]) {
                None => true,
                Some(Value::String(s)) => s == name,
                Some(Value::Number(n)) => n.as_i64() == Some(number),
                Some(_) => false,
            };
            tcp && matches
        });
    from_anywhere && port_ok
}

#[test]
fn network_policies_admit_the_kubelet_probes() {
    let mut failures = Vec::new();
    for o in overlays() {
        let policies: Vec<&Value> = o.objects("NetworkPolicy").collect();
        for binary in ["router-service", "executor-service"] {
            let Some((w, c)) = o.workload_running(binary) else {
                continue;
            };
            let labels = at(w, &["spec", "template", "metadata", "labels"])
                .cloned()
                .unwrap_or(Value::Null);
            let ingress: Vec<&Value> = policies
                .iter()
                .copied()
                .filter(|p| policy_selects(p, &labels) && restricts_ingress(p))
                .collect();
            let ports = container_ports(c);
            for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
                for kind in ["grpc", "tcpSocket", "httpGet"] {
                    let Some(port) = at(c, &[probe, kind, "port"]) else {
                        continue;
                    };
                    let Some(number) = resolve_port(port, &ports) else {
                        continue; // reported by ports_probes_services_and_addresses_agree
                    };
                    let name = ports
                        .iter()
                        .find(|(_, n)| **n == number)
                        .map_or("", |(name, _)| name.as_str());
                    // The kubelet probes from the node's address, which no pod or
                    // namespace selector matches.
                    let admitted = ingress.is_empty()
                        || ingress.iter().any(|p| {
                            seq(p, &["spec", "ingress"]).any(|r| admits_any_source(r, name, number))
                        });
                    if !admitted {
                        failures.push(format!(
                            "{}: {}: no NetworkPolicy lets the kubelet reach the {probe} port {name:?} ({number})",
                            o.name,
                            name_of(w)
                        ));
                    }
                }
            }
        }
    }
    assert_no_failures("probes and NetworkPolicies", failures);
}

#[test]
fn secrets_are_files_and_the_executor_presents_the_routers_credentials() {
    let operations =
        std::fs::read_to_string(test_support::workspace_root().join("docs/OPERATIONS.md"))
            .expect("docs/OPERATIONS.md");
    let mut failures = Vec::new();
    for o in overlays() {
        let (Some((rw, rc)), Some((ew, ec))) = (
            o.workload_running("router-service"),
            o.workload_running("executor-service"),
        ) else {
            continue;
        };
        let mut err = |msg: String| failures.push(format!("{}: {msg}", o.name));
        let router_env = container_env(o, rw, rc).unwrap_or_default();
        let executor_env = container_env(o, ew, ec).unwrap_or_default();

        // Both require the token, from a Secret file (not an environment variable).
        let mut tokens = Vec::new();
        for (w, c, env) in [(rw, rc, &router_env), (ew, ec, &executor_env)] {
            if env.contains_key("TASKROUTER_AUTH_TOKEN") {
                err(format!(
                    "{}: the token is an env var; mount it as a file",
                    name_of(w)
                ));
            }
            let file = setting(env, c, "--auth-token-file", "TASKROUTER_AUTH_TOKEN_FILE");
            match file.as_deref().and_then(|f| secret_file_source(w, c, f)) {
                Some(source) => tokens.push(source),
                None => err(format!(
                    "{}: --auth-token-file ({file:?}) is not a file of a mounted Secret",
                    name_of(w)
                )),
            }
        }
        let presented = setting(
            &executor_env,
            ec,
            "--router-auth-token-file",
            "EXECUTOR_ROUTER_AUTH_TOKEN_FILE",
        );
        let presented_source = presented
            .as_deref()
            .and_then(|f| secret_file_source(ew, ec, f));
        if presented_source.is_none() || presented_source.as_ref() != tokens.first() {
            err(format!(
                "the executor's --router-auth-token-file ({presented:?} -> {presented_source:?}) is not the router's token ({:?})",
                tokens.first()
            ));
        }

        // TLS: the executor dials https:// exactly when the router serves TLS, trusting a
        // CA from a Secret and checking a name the router's Service really has.
        let router_tls = setting(&router_env, rc, "--tls-cert", "TASKROUTER_TLS_CERT").is_some();
        let addr = setting(&executor_env, ec, "--router-addr", "ROUTER_ADDR").unwrap_or_default();
        let https = addr.starts_with("https://");
        if router_tls != https {
            err(format!(
                "the router serves {}, but the executor dials {addr:?}",
                if router_tls { "TLS" } else { "plaintext" }
            ));
        }
        let namespace = str_at(rw, &["metadata", "namespace"]).unwrap_or("default");
        if https {
            let ca = setting(
                &executor_env,
                ec,
                "--router-tls-ca",
                "EXECUTOR_ROUTER_TLS_CA",
            );
            if ca
                .as_deref()
                .and_then(|f| secret_file_source(ew, ec, f))
                .is_none()
            {
                err(format!(
                    "the executor's --router-tls-ca ({ca:?}) is not a file of a mounted Secret"
                ));
            }
            let domain = setting(
                &executor_env,
                ec,
                "--router-tls-domain",
                "EXECUTOR_ROUTER_TLS_DOMAIN",
            )
            .or_else(|| host_port(&addr).map(|(h, _)| h))
            .unwrap_or_default();
            let labels: Vec<&str> = domain.split('.').collect();
            let router_labels = at(rw, &["spec", "template", "metadata", "labels"])
                .cloned()
                .unwrap_or(Value::Null);
            let service_ok = o.object("Service", labels[0]).is_some_and(|svc| {
                let selector = at(svc, &["spec", "selector"])
                    .cloned()
                    .unwrap_or(Value::Null);
                labels_match(&selector, &router_labels)
            });
            let namespace_ok = labels.len() == 1 || labels[1] == namespace;
            let suffix_ok = labels.len() <= 2
                || labels[2..] == ["svc"]
                || labels[2..] == ["svc", "cluster", "local"];
            if !(service_ok && namespace_ok && suffix_ok) {
                err(format!(
                    "the executor checks the router's certificate for {domain:?}, which is not a name of a router Service in namespace {namespace}"
                ));
            }
        }
        for (w, c, env) in [(rw, rc, &router_env), (ew, ec, &executor_env)] {
            for (flag, var) in [
                ("--tls-cert", "TASKROUTER_TLS_CERT"),
                ("--tls-key", "TASKROUTER_TLS_KEY"),
            ] {
                if let Some(file) = setting(env, c, flag, var)
                    && secret_file_source(w, c, &file).is_none()
                {
                    err(format!(
                        "{}: {flag} ({file}) is not a file of a mounted Secret",
                        name_of(w)
                    ));
                }
            }
            for m in secret_mounts(w, c) {
                if m.sub_path || !m.read_only || m.optional {
                    err(format!(
                        "{}: Secret {} must be mounted read-only as a directory and not optional",
                        name_of(w),
                        m.secret
                    ));
                }
            }
        }

        // Every Secret the overlay does not create is one the operator is told to create.
        let mut referenced: Vec<String> = Vec::new();
        for w in o.workloads() {
            for c in containers(w) {
                referenced.extend(secret_mounts(w, c).into_iter().map(|m| m.secret));
                referenced.extend(
                    seq(c, &["env"])
                        .filter_map(|e| str_at(e, &["valueFrom", "secretKeyRef", "name"]))
                        .map(str::to_string),
                );
            }
        }
        referenced.sort();
        referenced.dedup();
        for name in referenced {
            let documented = operations
                .lines()
                .any(|l| l.contains("create secret") && l.split_whitespace().any(|w| w == name));
            if o.object("Secret", &name).is_none() && !documented {
                err(format!(
                    "Secret {name} is neither in the overlay nor created by a `kubectl create secret` line in docs/OPERATIONS.md"
                ));
            }
        }
    }
    assert_no_failures("Secrets, tokens and TLS wiring", failures);
}

#[test]
fn workloads_have_resources_and_a_restricted_security_context() {
    let mut failures = Vec::new();
    for o in overlays() {
        for w in o.workloads() {
            let spec = pod_spec(w);
            let wl = format!(
                "{}: {} {}",
                o.name,
                str_at(w, &["kind"]).unwrap_or("?"),
                name_of(w)
            );
            if at(spec, &["automountServiceAccountToken"]).and_then(Value::as_bool) != Some(false) {
                failures.push(format!("{wl}: automountServiceAccountToken is not false"));
            }
            let pod_sc = at(spec, &["securityContext"]);
            if pod_sc
                .and_then(|s| at(s, &["runAsNonRoot"]))
                .and_then(Value::as_bool)
                != Some(true)
            {
                failures.push(format!(
                    "{wl}: pod securityContext.runAsNonRoot is not true"
                ));
            }
            for c in containers(w).chain(seq(spec, &["initContainers"])) {
                let label = format!("{wl}/{}", name_of(c));
                for kind in ["requests", "limits"] {
                    for res in ["cpu", "memory"] {
                        if at(c, &["resources", kind, res]).is_none() {
                            failures.push(format!("{label}: no resources.{kind}.{res}"));
                        }
                    }
                }
                let sc = at(c, &["securityContext"]).cloned().unwrap_or(Value::Null);
                let flag = |key: &str| at(&sc, &[key]).and_then(Value::as_bool);
                if flag("runAsNonRoot") != Some(true) {
                    failures.push(format!("{label}: runAsNonRoot is not true"));
                }
                if flag("readOnlyRootFilesystem") != Some(true) {
                    failures.push(format!("{label}: readOnlyRootFilesystem is not true"));
                }
                if flag("allowPrivilegeEscalation") != Some(false) {
                    failures.push(format!("{label}: allowPrivilegeEscalation is not false"));
                }
                if flag("privileged") == Some(true) {
                    failures.push(format!("{label}: privileged"));
                }
                let drops_all =
                    seq(&sc, &["capabilities", "drop"]).any(|d| d.as_str() == Some("ALL"));
                if !drops_all {
                    failures.push(format!("{label}: capabilities.drop does not contain ALL"));
                }
                if seq(&sc, &["capabilities", "add"]).next().is_some() {
                    failures.push(format!("{label}: adds capabilities"));
                }
                let seccomp = str_at(&sc, &["seccompProfile", "type"])
                    .or_else(|| pod_sc.and_then(|s| str_at(s, &["seccompProfile", "type"])));
                if seccomp != Some("RuntimeDefault") {
                    failures.push(format!(
                        "{label}: seccompProfile is {seccomp:?}, not RuntimeDefault"
                    ));
                }
                let uid = at(&sc, &["runAsUser"])
                    .or_else(|| pod_sc.and_then(|s| at(s, &["runAsUser"])))
                    .and_then(Value::as_i64);
                let uid_ok = match service_binary(c) {
                    Some(_) => uid == Some(SERVICE_UID),
                    // High UIDs stay clear of host users if a container ever escapes.
                    None => uid.is_some_and(|u| u >= 10000),
                };
                if !uid_ok {
                    failures.push(format!("{label}: runAsUser is {uid:?}"));
                }
            }
        }
    }
    assert_no_failures("resources and security context", failures);
}

#[test]
fn executor_shutdown_fits_in_the_termination_grace_period() {
    let mut failures = Vec::new();
    for o in overlays() {
        let Some((w, c)) = o.workload_running("executor-service") else {
            continue;
        };
        let env = container_env(o, w, c).unwrap_or_default();
        let grace_arg = seq(c, &["args"])
            .filter_map(Value::as_str)
            .find_map(|a| a.strip_prefix("--shutdown-grace=").map(str::to_string));
        let shutdown_grace = grace_arg
            .or_else(|| env.get("EXECUTOR_SHUTDOWN_GRACE").cloned())
            .map(|g| {
                parse_duration(&g).unwrap_or_else(|| panic!("unreadable shutdown grace {g:?}"))
            })
            .unwrap_or(Duration::from_secs(20));
        let pre_stop = at(c, &["lifecycle", "preStop", "sleep", "seconds"])
            .and_then(Value::as_u64)
            .map(Duration::from_secs);
        if pre_stop.is_none() {
            failures.push(format!(
                "{}: the executor has no preStop sleep to let endpoint removal propagate",
                o.name
            ));
        }
        let termination = at(pod_spec(w), &["terminationGracePeriodSeconds"])
            .and_then(Value::as_u64)
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(30));
        // Room for releasing leases, re-enqueueing and closing connections.
        let needed = shutdown_grace + pre_stop.unwrap_or_default() + Duration::from_secs(10);
        if termination < needed {
            failures.push(format!(
                "{}: terminationGracePeriodSeconds {termination:?} < preStop {pre_stop:?} + shutdown grace {shutdown_grace:?} + 10s",
                o.name
            ));
        }
    }
    assert_no_failures("executor shutdown", failures);
}

#[test]
fn autoscaler_and_disruption_budgets_target_real_workloads() {
    let mut failures = Vec::new();
    for o in overlays() {
        let Some(hpa) = o.object("HorizontalPodAutoscaler", "router") else {
            failures.push(format!(
                "{}: no HorizontalPodAutoscaler for the router",
                o.name
            ));
            continue;
        };
        let target = str_at(hpa, &["spec", "scaleTargetRef", "name"]).unwrap_or("");
        match o.object("Deployment", target) {
            None => failures.push(format!("{}: the HPA targets missing Deployment {target:?}", o.name)),
            Some(d) if at(d, &["spec", "replicas"]).is_some() => failures.push(format!(
                "{}: Deployment {target} sets replicas, which every apply would reset under the HPA",
                o.name
            )),
            Some(_) => {}
        }
        for pdb in o.objects("PodDisruptionBudget") {
            let selector = at(pdb, &["spec", "selector", "matchLabels"])
                .cloned()
                .unwrap_or(Value::Null);
            let selected = o.workloads().any(|w| {
                at(w, &["spec", "template", "metadata", "labels"])
                    .is_some_and(|l| labels_match(&selector, l))
            });
            if !selected {
                failures.push(format!(
                    "{}: PDB {} selects no workload",
                    o.name,
                    name_of(pdb)
                ));
            }
        }
        for name in ["router", "executor"] {
            if o.object("PodDisruptionBudget", name).is_none() {
                failures.push(format!("{}: no PodDisruptionBudget {name}", o.name));
            }
        }
    }
    assert_no_failures("autoscaling and disruption budgets", failures);
}

#[test]
fn the_rollout_controller_may_only_replace_the_policy_the_routers_mount() {
    const ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
    let mut failures = Vec::new();
    for o in overlays() {
        let mut err = |msg: String| failures.push(format!("{}: {msg}", o.name));
        let Some(w) = o.object("Deployment", "rollout-controller") else {
            err("no Deployment rollout-controller".into());
            continue;
        };
        let Some(c) = containers(w).next() else {
            err("rollout-controller has no container".into());
            continue;
        };
        let env = match container_env(o, w, c) {
            Ok(env) => env,
            Err(e) => {
                err(format!("rollout-controller env: {e}"));
                continue;
            }
        };
        // One controller, never two at once.
        if at(w, &["spec", "replicas"]).and_then(Value::as_i64) != Some(1)
            || str_at(w, &["spec", "strategy", "type"]) != Some("Recreate")
        {
            err("rollout-controller must have replicas 1 and the Recreate strategy".into());
        }

        // It writes the very ConfigMap key the routers read.
        let cm = env
            .get("ROLLOUT_POLICY_CONFIGMAP")
            .cloned()
            .unwrap_or_default();
        let key = env
            .get("ROLLOUT_POLICY_CONFIGMAP_KEY")
            .cloned()
            .unwrap_or_else(|| "policy.toml".into());
        match o.workload_running("router-service") {
            Some((rw, rc)) => {
                let router_env = container_env(o, rw, rc).unwrap_or_default();
                let policy = router_env.get("ROUTER_POLICY").cloned().unwrap_or_default();
                let read = config_map_mounts(rw, rc)
                    .iter()
                    .any(|(mount, name, _)| *name == cm && policy == format!("{mount}/{key}"));
                if !read {
                    err(format!(
                        "the controller writes {cm:?} key {key:?}, but the router reads {policy:?} from another ConfigMap or key"
                    ));
                }
            }
            None => err("no router".into()),
        }
        if o.config_map_data(&cm).is_none_or(|d| !d.contains_key(&key)) {
            err(format!(
                "ConfigMap {cm:?} with key {key:?} is not in the overlay"
            ));
        }

        // Its Role: get and update of that one ConfigMap, nothing more.
        let sa = str_at(pod_spec(w), &["serviceAccountName"]).unwrap_or("");
        let bound_roles: Vec<&str> = o
            .objects("RoleBinding")
            .chain(o.objects("ClusterRoleBinding"))
            .filter(|b| {
                seq(b, &["subjects"]).any(|s| {
                    str_at(s, &["kind"]) == Some("ServiceAccount")
                        && str_at(s, &["name"]) == Some(sa)
                })
            })
            .map(|b| {
                if str_at(b, &["roleRef", "kind"]) == Some("Role") {
                    str_at(b, &["roleRef", "name"]).unwrap_or("")
                } else {
                    "<a ClusterRole>"
                }
            })
            .collect();
        if bound_roles.len() != 1 {
            err(format!(
                "ServiceAccount {sa:?} is bound to {bound_roles:?}, not exactly one Role"
            ));
        }
        for role in bound_roles {
            let Some(r) = o.object("Role", role) else {
                err(format!("Role {role:?} is not in the overlay"));
                continue;
            };
            let rules: Vec<&Value> = seq(r, &["rules"]).collect();
            let strings = |v: &Value, k: &str| -> Vec<String> {
                let mut out: Vec<String> = seq(v, &[k])
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect();
                out.sort();
                out
            };
            let exact = rules.len() == 1
                && strings(rules[0], "apiGroups") == [""]
                && strings(rules[0], "resources") == ["configmaps"]
                && strings(rules[0], "resourceNames") == [cm.clone()]
                && strings(rules[0], "verbs") == ["get", "update"];
            if !exact {
                err(format!(
                    "Role {role} must allow exactly get and update on ConfigMap {cm}: {rules:?}"
                ));
            }
        }

        // The credentials, where in-cluster clients look: a projected, expiring token,
        // the cluster CA and the namespace; no automounted token besides.
        let projected = seq(c, &["volumeMounts"])
            .filter(|m| str_at(m, &["mountPath"]) == Some(ACCOUNT_DIR))
            .filter_map(|m| {
                let name = str_at(m, &["name"])?;
                seq(pod_spec(w), &["volumes"]).find(|v| str_at(v, &["name"]) == Some(name))
            })
            .next();
        let paths: Vec<&str> = projected
            .map(|v| {
                seq(v, &["projected", "sources"])
                    .flat_map(|s| {
                        at(s, &["serviceAccountToken", "path"])
                            .into_iter()
                            .chain(seq(s, &["configMap", "items"]).filter_map(|i| at(i, &["path"])))
                            .chain(
                                seq(s, &["downwardAPI", "items"]).filter_map(|i| at(i, &["path"])),
                            )
                    })
                    .filter_map(Value::as_str)
                    .collect()
            })
            .unwrap_or_default();
        for file in ["token", "ca.crt", "namespace"] {
            if !paths.contains(&file) {
                err(format!(
                    "no projected {file} at {ACCOUNT_DIR} (found {paths:?})"
                ));
            }
        }

        // The real binary takes every setting; outside a pod it stops at the in-cluster
        // credentials, with exit code 2 naming the flag (clap and the other checks pass).
        let program = test_support::binary_path("rollout-controller");
        let args: Vec<String> = seq(c, &["command"])
            .skip(1)
            .chain(seq(c, &["args"]))
            .filter_map(|a| a.as_str().map(|s| expand(s, &env)))
            .collect();
        let out = run(&program, &args, &env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(2)
            || !stderr.contains("--policy-configmap: KUBERNETES_SERVICE_HOST is not set")
        {
            err(format!(
                "rollout-controller with the manifest's settings: {}",
                describe(&out)
            ));
        }
    }
    assert_no_failures("rollout controller", failures);
}

#[test]
fn helpers_behave_like_the_kubelet_and_the_binaries() {
    let vars: BTreeMap<String, String> = [("A".to_string(), "x".to_string())].into();
    assert_eq!(expand("redis://:$(A)@r:1/0", &vars), "redis://:x@r:1/0");
    assert_eq!(expand("$$(A) $(B)", &vars), "$(A) $(B)");
    assert!(has_var_reference("redis://:$(REDIS_PASSWORD)@redis:6379/0"));
    assert!(!has_var_reference("price $(5 or $ alone"));
    assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
    assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(
        host_port("redis://:pw@redis:6379/0"),
        Some(("redis".to_string(), 6379))
    );
    assert_eq!(
        host_port("http://router-headless:50051"),
        Some(("router-headless".to_string(), 50051))
    );
    assert_eq!(
        base64_decode("ZGV2LW9ubHktdG9rZW4=").as_deref(),
        Some(&b"dev-only-token"[..])
    );
    assert_eq!(base64_decode("YQ==").as_deref(), Some(&b"a"[..]));
    assert_eq!(base64_decode("not base64!"), None);
}

/// The executor's `--workspace-root` is on a writable volume of its own (the root
/// filesystem is read-only, and the cache must not share the agents' /tmp), sized above
/// the mirror bound.
#[test]
fn the_executor_workspace_root_is_a_writable_volume() {
    let mut failures = Vec::new();
    for o in overlays() {
        let Some((w, c)) = o.workload_running("executor-service") else {
            continue;
        };
        let label = format!("{}: {}", o.name, name_of(w));
        let env = container_env(o, w, c).unwrap_or_default();
        let Some(root) = setting(&env, c, "--workspace-root", "EXECUTOR_WORKSPACE_ROOT") else {
            failures.push(format!("{label}: no --workspace-root"));
            continue;
        };
        let mount =
            seq(c, &["volumeMounts"]).find(|m| str_at(m, &["mountPath"]) == Some(root.as_str()));
        let Some(mount) = mount else {
            failures.push(format!(
                "{label}: nothing is mounted at the workspace root {root}"
            ));
            continue;
        };
        if at(mount, &["readOnly"]).and_then(Value::as_bool) == Some(true) {
            failures.push(format!(
                "{label}: the workspace root {root} is mounted read-only"
            ));
        }
        let volume_name = str_at(mount, &["name"]).unwrap_or("");
        let volume = seq(pod_spec(w), &["volumes"]).find(|v| name_of(v) == volume_name);
        match volume.and_then(|v| at(v, &["emptyDir"])) {
            Some(dir) => {
                let limit = str_at(dir, &["sizeLimit"]).unwrap_or("");
                let gib = limit.strip_suffix("Gi").and_then(|n| n.parse::<u64>().ok());
                let needed = executor_service::workspace::config::DEFAULT_MAX_BYTES >> 30;
                if gib.is_none_or(|g| g <= needed) {
                    failures.push(format!(
                        "{label}: the workspace volume's sizeLimit {limit:?} must exceed the {needed} GiB mirror bound"
                    ));
                }
            }
            None if volume.and_then(|v| at(v, &["persistentVolumeClaim"])).is_some() => {}
            None => failures.push(format!(
                "{label}: the workspace root's volume {volume_name:?} is neither an emptyDir nor a PVC"
            )),
        }
    }
    assert_no_failures("workspace volume", failures);
}
