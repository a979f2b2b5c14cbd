//! The deployment files, docker-compose.yml and deploy/kubernetes/, checked against the
//! code they deploy: neither is run here (no container engine, no cluster), so without
//! this a renamed key, a moved port or a probe path would only show in someone's cluster.
//! Each configuration is loaded by Sluice's own loader with the environment the
//! container would get; ports, probes, roles, references between objects and shutdown
//! grace periods are compared with it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde_yaml::Value;
use sluice::settings::Settings;

/// The roles `sluice --role` accepts (bridge/src/main.rs, `Role`).
const ROLES: [&str; 3] = ["all", "ingress", "writer"];
const LIVE: &str = "/health/live";
const READY: &str = "/health/ready";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every non-empty YAML document of a file.
fn documents(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn kube_dir() -> PathBuf {
    root().join("deploy/kubernetes")
}

/// The YAML files of deploy/kubernetes, by name.
fn kube_files() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(kube_dir())
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect();
    names.sort();
    names
}

/// Every Kubernetes object of deploy/kubernetes (the kustomization is not one).
fn objects() -> Vec<Value> {
    kube_files()
        .iter()
        .filter(|n| !n.starts_with("kustomization."))
        .flat_map(|n| documents(&kube_dir().join(n)))
        .collect()
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn name(o: &Value) -> &str {
    text(&o["metadata"]["name"])
}

fn find<'a>(objects: &'a [Value], kind: &str, wanted: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| text(&o["kind"]) == kind && name(o) == wanted)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| s.iter().map(|x| text(x).to_owned()).collect())
        .unwrap_or_default()
}

/// Labels (or a selector) as a map.
fn labels(v: &Value) -> BTreeMap<String, String> {
    v.as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (text(k).to_owned(), text(v).to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A workload's pod template, for the kinds that have one.
fn pod_template(o: &Value) -> Option<&Value> {
    match text(&o["kind"]) {
        "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => Some(&o["spec"]["template"]),
        "CronJob" => Some(&o["spec"]["jobTemplate"]["spec"]["template"]),
        _ => None,
    }
}

/// The Dockerfile's ENTRYPOINT, and where its COPY lines put repository files.
struct Image {
    entrypoint: Vec<String>,
    copies: BTreeMap<String, String>,
}

fn image() -> Image {
    let dockerfile = read(&root().join("Dockerfile"));
    let mut entrypoint = Vec::new();
    let mut copies = BTreeMap::new();
    for line in dockerfile.lines().map(str::trim) {
        if let Some(json) = line.strip_prefix("ENTRYPOINT ") {
            entrypoint = serde_json::from_str(json).expect("ENTRYPOINT in exec form");
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        if let ["COPY", from, to] = words[..] {
            copies.insert(to.to_owned(), from.to_owned());
        }
    }
    assert!(!entrypoint.is_empty(), "the Dockerfile has an ENTRYPOINT");
    Image { entrypoint, copies }
}

/// A `sluice` command line, as bridge/src/main.rs's `Cli` reads it.
#[derive(Debug)]
struct Invocation {
    config: String,
    role: String,
    migrate_only: bool,
}

fn invocation(argv: &[String], who: &str) -> Invocation {
    let program = argv.first().map(String::as_str).unwrap_or("");
    assert!(
        program == "sluice" || program.ends_with("/sluice"),
        "{who}: runs {program:?}, not sluice"
    );
    let mut config = None;
    let mut role = "all".to_owned();
    let mut migrate_only = false;
    let mut args = argv[1..].iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f, Some(v.to_owned())),
            None => (arg.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next().cloned())
                .unwrap_or_else(|| panic!("{who}: {flag} without a value"))
        };
        match flag {
            "--config" | "-c" => {
                assert!(
                    config.is_none(),
                    "{who}: --config given twice (clap refuses it)"
                );
                config = Some(value());
            }
            "--role" => role = value(),
            "--migrate-only" => migrate_only = true,
            other => panic!("{who}: sluice has no argument {other:?}"),
        }
    }
    assert!(
        ROLES.contains(&role.as_str()),
        "{who}: --role {role} is not one of {ROLES:?}"
    );
    // Without --config, sluice reads broker.toml from its working directory, which the
    // image does not have.
    let config = config.unwrap_or_else(|| panic!("{who}: no --config"));
    Invocation {
        config,
        role,
        migrate_only,
    }
}

/// The configuration, as Sluice loads it with `env` for its environment.
fn load(who: &str, toml: &str, env: &BTreeMap<String, String>) -> Settings {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    std::io::Write::write_all(&mut file, toml.as_bytes()).expect("write");
    Settings::load_with_env(file.path(), env)
        .unwrap_or_else(|e| panic!("{who}: the configuration does not load: {e}"))
}

/// The addresses a role listens on, by port, with the setting that names each.
fn listeners(s: &Settings, role: &str) -> BTreeMap<u16, (&'static str, SocketAddr)> {
    let mut all = vec![("http.listen", s.http.listen)];
    if role != "writer" {
        let i = &s.ingress;
        all.push(("ingress.listen", i.listen));
        all.extend(i.tls.as_ref().map(|t| ("ingress.tls.listen", t.listen)));
        if let Some(h) = &i.http {
            all.push(("ingress.http.listen", h.listen));
            all.extend(h.tls_listen.map(|a| ("ingress.http.tls_listen", a)));
        }
    }
    all.into_iter()
        .map(|(key, a)| (a.port(), (key, a)))
        .collect()
}

/// The longest a role may take to stop after SIGTERM, in milliseconds.
fn stop_ms(s: &Settings, role: &str) -> u64 {
    let mut ms = 0;
    if role != "writer" {
        // The ingress waits up to drain_timeout_ms (plus 3 s for stragglers, ingress/mod.rs)
        // for Kafka's answers, then flushes the producer for up to drain_timeout_ms again.
        ms += 2 * s.ingress.drain_timeout_ms + 3_000;
    }
    if role != "ingress" && s.anomalies.enabled {
        // The writer waits up to kafka.delivery_timeout_ms for its anomalies' publisher.
        ms = ms.max(s.kafka.delivery_timeout_ms);
    }
    ms
}

/// A value a container's env takes from a ConfigMap or Secret of the manifests.
fn key_value(objects: &[Value], kind: &str, object: &str, key: &str, who: &str) -> String {
    let o = find(objects, kind, object)
        .unwrap_or_else(|| panic!("{who}: {kind} {object} is not in deploy/kubernetes"));
    if let Some(v) = o["stringData"][key].as_str() {
        return v.to_owned();
    }
    let v = o["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("{who}: {kind} {object} has no key {key}"));
    if kind == "Secret" {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v.trim())
            .unwrap_or_else(|e| panic!("Secret {object} {key}: {e}"));
        return String::from_utf8(bytes).expect("UTF-8");
    }
    v.to_owned()
}

/// A container's environment, with the values its Secrets and ConfigMaps hold.
fn container_env(objects: &[Value], c: &Value, who: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for from in c["envFrom"].as_sequence().into_iter().flatten() {
        for (field, kind) in [("configMapRef", "ConfigMap"), ("secretRef", "Secret")] {
            let Some(object) = from[field]["name"].as_str() else {
                continue;
            };
            let o = find(objects, kind, object)
                .unwrap_or_else(|| panic!("{who}: {kind} {object} is not in deploy/kubernetes"));
            for section in ["data", "stringData"] {
                for key in labels(&o[section]).keys() {
                    let value = key_value(objects, kind, object, key, who);
                    env.insert(format!("{}{key}", text(&from["prefix"])), value);
                }
            }
        }
    }
    for e in c["env"].as_sequence().into_iter().flatten() {
        let var = text(&e["name"]).to_owned();
        let from = &e["valueFrom"];
        let value = if let Some(v) = e["value"].as_str() {
            v.to_owned()
        } else if from["secretKeyRef"].is_mapping() {
            let r = &from["secretKeyRef"];
            key_value(objects, "Secret", text(&r["name"]), text(&r["key"]), who)
        } else if from["configMapKeyRef"].is_mapping() {
            let r = &from["configMapKeyRef"];
            key_value(objects, "ConfigMap", text(&r["name"]), text(&r["key"]), who)
        } else {
            panic!("{who}: env {var} has neither a value nor a Secret or ConfigMap key");
        };
        env.insert(var, value);
    }
    env
}

/// The file at `path` in a container, from the ConfigMap or Secret volume mounted over it.
fn mounted_file(objects: &[Value], pod: &Value, c: &Value, path: &str, who: &str) -> String {
    for m in c["volumeMounts"].as_sequence().into_iter().flatten() {
        let dir = text(&m["mountPath"]).trim_end_matches('/');
        let Some(file) = path.strip_prefix(dir).and_then(|r| r.strip_prefix('/')) else {
            continue;
        };
        let volume = pod["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == m["name"])
            .unwrap_or_else(|| panic!("{who}: no volume {:?}", m["name"]));
        let (kind, object, source) = if volume["configMap"].is_mapping() {
            let s = &volume["configMap"];
            ("ConfigMap", text(&s["name"]), s)
        } else if volume["secret"].is_mapping() {
            let s = &volume["secret"];
            ("Secret", text(&s["secretName"]), s)
        } else {
            panic!(
                "{who}: {path} is on volume {:?}, not a ConfigMap or Secret",
                m["name"]
            );
        };
        // `items` put chosen keys at chosen paths; without them every key is a file.
        let key = match source["items"].as_sequence() {
            Some(items) => items
                .iter()
                .find(|i| text(&i["path"]) == file)
                .map(|i| text(&i["key"]).to_owned())
                .unwrap_or_else(|| panic!("{who}: {kind} {object} puts no key at {path}")),
            None => file.to_owned(),
        };
        return key_value(objects, kind, object, &key, who);
    }
    panic!(
        "{who}: nothing of the manifests is mounted at {path} (the image's own file would be read)"
    )
}

/// A container port, by number or by name.
fn container_port(c: &Value, port: &Value) -> Option<u16> {
    let ports = c["ports"].as_sequence()?;
    ports
        .iter()
        .find(|p| match port {
            Value::Number(_) => p["containerPort"] == *port,
            _ => p["name"] == *port,
        })
        .and_then(|p| p["containerPort"].as_u64())
        .and_then(|n| u16::try_from(n).ok())
}

/// The checks of one container running sluice; its invocation and loaded settings.
fn check_container(
    objects: &[Value],
    pod: &Value,
    c: &Value,
    who: &str,
    image: &Image,
) -> (Invocation, Settings) {
    let mut argv = match c["command"].as_sequence() {
        Some(_) => strings(&c["command"]),
        None => image.entrypoint.clone(),
    };
    argv.extend(strings(&c["args"]));
    let run = invocation(&argv, who);
    let toml = mounted_file(objects, pod, c, &run.config, who);
    let env = container_env(objects, c, who);
    let settings = load(who, &toml, &env);
    // The ingress reads [auth]'s files; a writer or a migration never opens them.
    let reads_auth = run.role != "writer" && !run.migrate_only;
    let auth = &settings.auth;
    for (key, file) in [
        ("auth.password_file", &auth.password_file),
        ("auth.acl_file", &auth.acl_file),
        ("auth.token_file", &auth.token_file),
    ] {
        if let Some(file) = file.as_ref().filter(|_| reads_auth) {
            let path = file.to_string_lossy();
            mounted_file(objects, pod, c, &path, &format!("{who} {key}"));
        }
    }
    let security = &c["securityContext"];
    assert_eq!(
        security["readOnlyRootFilesystem"].as_bool(),
        Some(true),
        "{who}: a read-only root file system"
    );
    assert_eq!(
        security["allowPrivilegeEscalation"].as_bool(),
        Some(false),
        "{who}: no privilege escalation"
    );
    if run.migrate_only {
        return (run, settings);
    }
    let http = settings.http.listen.port();
    for (probe, paths) in [
        ("livenessProbe", &[LIVE][..]),
        ("readinessProbe", &[READY]),
        ("startupProbe", &[LIVE, READY]),
    ] {
        let get = &c[probe]["httpGet"];
        if probe == "startupProbe" && c[probe].is_null() {
            continue;
        }
        let path = text(&get["path"]);
        assert!(
            paths.contains(&path),
            "{who}: {probe} asks {path:?}, not {paths:?}"
        );
        assert_eq!(
            container_port(c, &get["port"]),
            Some(http),
            "{who}: {probe} is not on http.listen's port"
        );
    }
    let declared: BTreeSet<u16> = c["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|p| p["containerPort"].as_u64())
        .filter_map(|n| u16::try_from(n).ok())
        .collect();
    let listening = listeners(&settings, &run.role);
    assert_eq!(
        declared,
        listening.keys().copied().collect(),
        "{who}: containerPorts are not the ports --role {} listens on ({listening:?})",
        run.role
    );
    for (key, addr) in listening.values() {
        assert!(
            !addr.ip().is_loopback(),
            "{who}: {key} {addr} is out of reach of the pod's network"
        );
    }
    (run, settings)
}

#[test]
fn every_manifest_is_a_named_object_and_kustomization_lists_them_all() {
    let objects = objects();
    assert!(!objects.is_empty(), "deploy/kubernetes holds manifests");
    for o in &objects {
        for field in ["apiVersion", "kind"] {
            assert!(
                !text(&o[field]).is_empty(),
                "an object without {field}: {o:?}"
            );
        }
        assert!(
            !name(o).is_empty(),
            "a {} without metadata.name",
            text(&o["kind"])
        );
    }
    let kustomization = documents(&kube_dir().join("kustomization.yaml"));
    let listed: BTreeSet<String> = strings(&kustomization[0]["resources"])
        .into_iter()
        .collect();
    let files: BTreeSet<String> = kube_files()
        .into_iter()
        .filter(|n| !n.starts_with("kustomization."))
        .collect();
    assert_eq!(
        listed, files,
        "kustomization.yaml resources are the manifests"
    );
}

#[test]
fn selectors_services_and_references_agree() {
    let objects = objects();
    let workloads: Vec<&Value> = objects
        .iter()
        .filter(|o| pod_template(o).is_some())
        .collect();
    for w in &workloads {
        let pod = pod_template(w).expect("template");
        let who = format!("{} {}", text(&w["kind"]), name(w));
        if !matches!(text(&w["kind"]), "Job" | "CronJob") {
            let selector = labels(&w["spec"]["selector"]["matchLabels"]);
            assert!(
                selects(&selector, &labels(&pod["metadata"]["labels"])),
                "{who}: its selector does not match its pods' labels"
            );
        }
        // Every ConfigMap and Secret the pods name exists, with the keys they name.
        let spec = &pod["spec"];
        for v in spec["volumes"].as_sequence().into_iter().flatten() {
            let refs = [
                ("ConfigMap", &v["configMap"], "name"),
                ("Secret", &v["secret"], "secretName"),
            ];
            for (kind, source, field) in refs {
                let Some(object) = source[field].as_str() else {
                    continue;
                };
                find(&objects, kind, object).unwrap_or_else(|| {
                    panic!("{who}: {kind} {object} is not in deploy/kubernetes")
                });
                for item in source["items"].as_sequence().into_iter().flatten() {
                    key_value(&objects, kind, object, text(&item["key"]), &who);
                }
            }
        }
        let containers = ["initContainers", "containers"]
            .into_iter()
            .flat_map(|f| spec[f].as_sequence().into_iter().flatten());
        for c in containers {
            container_env(&objects, c, &format!("{who} {}", text(&c["name"])));
        }
    }
    for s in objects.iter().filter(|o| text(&o["kind"]) == "Service") {
        let who = format!("Service {}", name(s));
        let selector = labels(&s["spec"]["selector"]);
        let pods: Vec<&Value> = workloads
            .iter()
            .filter_map(|w| pod_template(w))
            .filter(|p| selects(&selector, &labels(&p["metadata"]["labels"])))
            .collect();
        assert!(!pods.is_empty(), "{who}: its selector matches no pods");
        for port in s["spec"]["ports"].as_sequence().into_iter().flatten() {
            let target = match &port["targetPort"] {
                Value::Null => &port["port"],
                t => t,
            };
            for p in &pods {
                let containers = p["spec"]["containers"].as_sequence().expect("containers");
                assert!(
                    containers
                        .iter()
                        .any(|c| container_port(c, target).is_some()),
                    "{who}: targetPort {target:?} is no container port of the pods it selects"
                );
            }
        }
    }
}

#[test]
fn the_pods_run_what_their_configuration_says() {
    let objects = objects();
    let image = image();
    let mut migrates = false;
    let mut roles = BTreeSet::new();
    for w in objects.iter().filter(|o| pod_template(o).is_some()) {
        let kind = text(&w["kind"]);
        let pod = pod_template(w).expect("template");
        let spec = &pod["spec"];
        let pod_security = &spec["securityContext"];
        assert_eq!(
            pod_security["runAsNonRoot"].as_bool(),
            Some(true),
            "{kind} {}: runs as non-root",
            name(w)
        );
        // Kubernetes' default.
        let grace_s = spec["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
        for field in ["initContainers", "containers"] {
            for c in spec[field].as_sequence().into_iter().flatten() {
                let who = format!("{kind} {} container {}", name(w), text(&c["name"]));
                let (run, settings) = check_container(&objects, spec, c, &who, &image);
                migrates |= run.migrate_only;
                if run.migrate_only {
                    continue;
                }
                assert!(
                    field == "containers",
                    "{who}: a server as an init container"
                );
                roles.insert(run.role.clone());
                let stop = stop_ms(&settings, &run.role);
                assert!(
                    grace_s * 1000 > stop,
                    "{who}: terminationGracePeriodSeconds {grace_s} is shorter than the {stop} ms --role {} may take to stop",
                    run.role
                );
                let annotations = labels(&pod["metadata"]["annotations"]);
                if let Some(port) = annotations.get("prometheus.io/port") {
                    assert_eq!(
                        port,
                        &settings.http.listen.port().to_string(),
                        "{who}: Prometheus scrapes http.listen's port"
                    );
                    let path = annotations.get("prometheus.io/path");
                    assert_eq!(path.map(String::as_str), Some("/metrics"), "{who}");
                }
            }
        }
    }
    assert!(migrates, "something runs sluice --migrate-only");
    assert!(
        roles.contains("all") || (roles.contains("ingress") && roles.contains("writer")),
        "every part runs somewhere: {roles:?}"
    );
}

/// A compose file's `environment`, in its map or list form.
fn compose_env(v: &Value) -> BTreeMap<String, String> {
    match v {
        Value::Sequence(items) => items
            .iter()
            .filter_map(|i| i.as_str()?.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        Value::Mapping(m) => m
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Value::String(s) => s.clone(),
                    Value::Bool(b) => b.to_string(),
                    Value::Number(n) => n.to_string(),
                    _ => String::new(),
                };
                (text(k).to_owned(), value)
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// Words of a compose `command`/`entrypoint`, in its list or string form.
fn words(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::String(s) => Some(s.split_whitespace().map(str::to_owned).collect()),
        Value::Sequence(_) => Some(strings(v)),
        _ => None,
    }
}

#[test]
fn docker_compose_runs_what_its_configuration_says() {
    let image = image();
    let compose = documents(&root().join("docker-compose.yml"));
    let services = compose[0]["services"].as_mapping().expect("services");
    let mut checked = 0;
    // Sluice's services are the ones built from the Dockerfile.
    for (service, s) in services.iter().filter(|(_, s)| !s["build"].is_null()) {
        let who = format!("docker-compose.yml service {}", text(service));
        let mut argv = words(&s["entrypoint"]).unwrap_or_else(|| image.entrypoint.clone());
        argv.extend(words(&s["command"]).unwrap_or_default());
        let run = invocation(&argv, &who);
        // The configuration: a file mounted from the repository, or the image's copy.
        let mounted = s["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find_map(|v| {
                let mut parts = text(v).split(':');
                let (from, to) = (parts.next()?, parts.next()?);
                (to == run.config).then(|| from.to_owned())
            });
        let from = mounted
            .or_else(|| image.copies.get(&run.config).cloned())
            .unwrap_or_else(|| panic!("{who}: nothing puts a file at {}", run.config));
        let toml = read(&root().join(from));
        let settings = load(&who, &toml, &compose_env(&s["environment"]));
        let listening = listeners(&settings, &run.role);
        let published: BTreeSet<u16> = strings(&s["ports"])
            .iter()
            .map(|p| {
                let inside = p.rsplit(':').next().unwrap_or("");
                let inside = inside.split('/').next().unwrap_or("");
                inside
                    .parse()
                    .unwrap_or_else(|_| panic!("{who}: port {p:?}"))
            })
            .collect();
        for port in &published {
            let (key, addr) = listening.get(port).unwrap_or_else(|| {
                panic!(
                    "{who}: publishes {port}, which --role {} does not listen on ({listening:?})",
                    run.role
                )
            });
            assert!(
                !addr.ip().is_loopback(),
                "{who}: {key} {addr} is out of reach of the published port"
            );
        }
        if !run.migrate_only {
            let health = strings(&s["healthcheck"]["test"]).join(" ");
            let port = settings.http.listen.port().to_string();
            assert!(
                health.contains(READY) && health.contains(&port),
                "{who}: the healthcheck asks {READY} on http.listen's port {port}: {health:?}"
            );
        }
        checked += 1;
    }
    assert!(checked > 0, "docker-compose.yml runs sluice");
}
