//! The Jellyfin emulator honours the real server's contract (reference/jellyfin-api.md), and the
//! viewer streams through it. Everything runs on loopback with random ports; a "remote" viewer
//! connects from 127.0.0.2 against a world whose LocalNetworkSubnets leave 127/8 out.

#[path = "support/emulator.rs"]
mod emulator;
#[path = "support/viewer.rs"]
mod viewer;

use emulator::{Emulator, World};
use serde_json::{json, Value};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use viewer::{http_from, HttpResponse};

const KEY: &str = "0123456789abcdef0123456789abcdef";
const ADMIN: &str = "4b8e2f1a9c7d4e3fa1b2c3d4e5f60718";
const ALICE: &str = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
const BOB: &str = "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";
const ITEM: &str = "6f1c0a2b9d8e4f7a8b3c2d1e0f9a8b7c";
const T: Duration = Duration::from_secs(10);

fn remote_ip() -> Option<IpAddr> {
    Some(IpAddr::from([127, 0, 0, 2]))
}

/// A world; `extra` overrides top-level keys.
fn world(extra: Value) -> World {
    let mut w = json!({
        "api_keys": [{"name": "jellydemon", "token": KEY}],
        "users": [
            {"name": "admin", "id": ADMIN, "is_administrator": true},
            {"name": "alice", "id": ALICE, "remote_client_bitrate_limit": 3000000},
            {"name": "bob", "id": BOB}
        ],
        "items": [
            {"id": ITEM, "name": "The Long Night", "type": "Episode", "series_name": "Example",
             "bitrate": 8000000, "audio_bitrate": 640000, "runtime_ticks": 49234560000u64}
        ],
        "segment_ms": 250,
        "prefill_segments": 8
    });
    if let (Value::Object(w), Value::Object(e)) = (&mut w, extra) {
        for (k, v) in e {
            w.insert(k, v);
        }
    }
    World::parse(&w.to_string()).expect("test world is valid")
}

fn start(w: World) -> Emulator {
    Emulator::start(w, &["127.0.0.1:0".to_string()]).expect("emulator starts")
}

fn addr(e: &Emulator) -> String {
    e.addrs[0].to_string()
}

fn key_auth() -> String {
    format!("MediaBrowser Token=\"{KEY}\"")
}

fn req(
    e: &Emulator,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<Value>,
) -> HttpResponse {
    req_from(e, None, method, path, auth, body)
}

fn req_from(
    e: &Emulator,
    source: Option<IpAddr>,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<Value>,
) -> HttpResponse {
    let mut h = Vec::new();
    if let Some(a) = auth {
        h.push(("Authorization", a));
    }
    let b = body.map(|b| b.to_string());
    if b.is_some() {
        h.push(("Content-Type", "application/json"));
    }
    http_from(
        source,
        &addr(e),
        method,
        path,
        &h,
        b.as_ref().map(|s| s.as_bytes()),
        T,
    )
    .expect("HTTP exchange")
}

fn get(e: &Emulator, path: &str) -> HttpResponse {
    req(e, "GET", path, Some(&key_auth()), None)
}

fn post(e: &Emulator, path: &str, body: Option<Value>) -> HttpResponse {
    req(e, "POST", path, Some(&key_auth()), body)
}

fn state(e: &Emulator) -> Value {
    let r = req(e, "GET", "/_emu/state", None, None);
    assert_eq!(r.status, 200);
    r.json().unwrap()
}

/// Polls the emulator's state until `pred` holds (bounded).
fn wait_state(e: &Emulator, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = state(e);
        if pred(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn no_nulls(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Array(a) => a.iter().all(no_nulls),
        Value::Object(o) => o.values().all(no_nulls),
        _ => true,
    }
}

fn is_hex32(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn pascal_keys(v: &Value) -> bool {
    match v {
        Value::Array(a) => a.iter().all(pascal_keys),
        Value::Object(o) => o.iter().all(|(k, v)| {
            k.chars().next().is_some_and(|c| c.is_ascii_uppercase()) && pascal_keys(v)
        }),
        _ => true,
    }
}

/// Logs a client in as `user`; returns (token, session id).
fn login(
    e: &Emulator,
    src: Option<IpAddr>,
    user: &str,
    client: &str,
    dev: &str,
) -> (String, String) {
    let auth = viewer::auth_header(client, "dev", dev, None);
    let r = req_from(
        e,
        src,
        "POST",
        "/Users/AuthenticateByName",
        Some(&auth),
        Some(json!({"Username": user, "Pw": ""})),
    );
    assert_eq!(r.status, 200, "login {user}");
    let v = r.json().unwrap();
    (
        v["AccessToken"].as_str().unwrap().to_string(),
        v["SessionInfo"]["Id"].as_str().unwrap().to_string(),
    )
}

fn user_auth(client: &str, dev: &str, token: &str) -> String {
    viewer::auth_header(client, "dev", dev, Some(token))
}

fn session<'a>(list: &'a Value, id: &str) -> &'a Value {
    list.as_array()
        .and_then(|a| a.iter().find(|s| s["Id"] == id))
        .unwrap_or_else(|| panic!("session {id} not in {list:#}"))
}

fn viewer_opts(e: &Emulator, user: &str, client: &str, dev: &str) -> viewer::ViewerOpts {
    viewer::ViewerOpts::parse(&[
        "--server".into(),
        addr(e),
        "--user".into(),
        user.into(),
        "--item".into(),
        ITEM.into(),
        "--client".into(),
        client.into(),
        "--device-id".into(),
        dev.into(),
    ])
    .unwrap()
}

/// A viewer in a thread, stopped and joined on drop.
struct BgViewer {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Result<viewer::Summary, String>>>,
}

impl BgViewer {
    fn start(opts: viewer::ViewerOpts) -> BgViewer {
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = Arc::clone(&stop);
        let handle = std::thread::spawn(move || viewer::run(&opts, &s2, &mut std::io::sink()));
        BgViewer {
            stop,
            handle: Some(handle),
        }
    }
    fn finish(mut self) -> viewer::Summary {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .take()
            .unwrap()
            .join()
            .unwrap()
            .expect("viewer ran")
    }
}

impl Drop for BgViewer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

// ---- wire conventions and auth --------------------------------------------------------------

#[test]
fn public_info_is_anonymous_pascalcase_and_ping_answers_the_name() {
    let e = start(world(json!({})));
    for auth in [None, Some("MediaBrowser Token=\"nope\"")] {
        let r = req(&e, "GET", "/System/Info/Public", auth, None);
        assert_eq!(r.status, 200);
        let v = r.json().unwrap();
        assert!(pascal_keys(&v), "{v}");
        assert_eq!(v["Version"], "10.11.11");
        assert_eq!(v["ProductName"], "Jellyfin Server");
        assert!(is_hex32(v["Id"].as_str().unwrap()));
        assert_eq!(v["StartupWizardCompleted"], true);
    }
    let r = req(&e, "GET", "/System/Ping", None, None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json().unwrap(), json!("homenet-jellyfin"));
    // Routes are case-insensitive, like ASP.NET's.
    assert_eq!(
        req(&e, "GET", "/system/info/public", None, None).status,
        200
    );
}

#[test]
fn authorize_endpoints_answer_401_empty_without_a_valid_token() {
    let e = start(world(json!({})));
    let bad = [
        None,
        Some("MediaBrowser Token=\"ffffffffffffffffffffffffffffffff\"".to_string()),
        // Keys are case-sensitive: `token=` is not a token.
        Some(format!("MediaBrowser token=\"{KEY}\"")),
        // The legacy scheme is off unless the world enables it.
        Some(format!("Emby Token=\"{KEY}\"")),
        Some(format!("Bearer {KEY}")),
    ];
    for path in [
        "/System/Info",
        "/Sessions",
        "/Users",
        &format!("/Users/{ALICE}"),
    ] {
        for auth in &bad {
            let r = req(&e, "GET", path, auth.as_deref(), None);
            assert_eq!(r.status, 401, "{path} with {auth:?}");
            assert!(r.body.is_empty(), "401 body must be empty");
        }
    }
    let r = http_from(
        None,
        &addr(&e),
        "GET",
        "/Sessions",
        &[("X-Emby-Token", KEY)],
        None,
        T,
    )
    .unwrap();
    assert_eq!(r.status, 401, "X-Emby-Token is legacy");
    // Accepted forms: scheme any case, quotes optional, extra keys, ?ApiKey=.
    for auth in [
        format!("MediaBrowser Token=\"{KEY}\""),
        format!("mediabrowser Client=\"x\", Token={KEY}, Version=\"1\""),
        format!("MediaBrowser Client=\"a,b\", Token=\"{KEY}\""),
    ] {
        assert_eq!(
            req(&e, "GET", "/System/Info", Some(&auth), None).status,
            200,
            "{auth}"
        );
    }
    assert_eq!(
        req(&e, "GET", &format!("/System/Info?ApiKey={KEY}"), None, None).status,
        200
    );
    let info = get(&e, "/System/Info").json().unwrap();
    assert!(pascal_keys(&info) && no_nulls(&info));
    assert_eq!(info["Version"], "10.11.11");

    let legacy = start(world(json!({"enable_legacy_authorization": true})));
    let r = http_from(
        None,
        &addr(&legacy),
        "GET",
        "/Sessions",
        &[("X-Emby-Token", KEY)],
        None,
        T,
    )
    .unwrap();
    assert_eq!(r.status, 200, "X-Emby-Token with legacy authorization");
}

#[test]
fn authorization_header_grammar_matches_the_server() {
    let p = |s: &str| emulator::parse_authorization(s, false);
    let m = p(r#"MediaBrowser Client="Jelly+Fin", Device="My%20TV", DeviceId="a,b", Version="1.0", Token="abc""#).unwrap();
    assert_eq!(m["Client"], "Jelly Fin");
    assert_eq!(m["Device"], "My TV");
    assert_eq!(m["DeviceId"], "a,b");
    assert_eq!(m["Token"], "abc");
    let m = p("MediaBrowser Token=abc,Client=x").unwrap();
    assert_eq!(m["Token"], "abc");
    assert_eq!(m["Client"], "x");
    assert!(p("Emby Token=\"abc\"").is_none());
    assert!(emulator::parse_authorization("Emby Token=\"abc\"", true).is_some());
    assert!(p("MediaBrowser").is_none());
    assert!(!p("MediaBrowser token=\"abc\"")
        .unwrap()
        .contains_key("Token"));
}

// ---- users and policies -------------------------------------------------------------------

#[test]
fn users_list_and_lookup_answer_like_the_server() {
    let e = start(world(json!({})));
    let users = get(&e, "/Users").json().unwrap();
    let names: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["Name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "alice", "bob"]);
    assert!(pascal_keys(&users) && no_nulls(&users));
    let alice = get(&e, &format!("/Users/{ALICE}")).json().unwrap();
    assert_eq!(alice["Id"], ALICE);
    assert_eq!(alice["Policy"]["RemoteClientBitrateLimit"], 3000000);
    assert_eq!(
        alice["Policy"]["AuthenticationProviderId"],
        emulator::DEFAULT_AUTH_PROVIDER
    );
    assert_eq!(
        alice["Policy"]["PasswordResetProviderId"],
        emulator::DEFAULT_RESET_PROVIDER
    );
    // Any Guid.Parse form is accepted.
    assert_eq!(
        get(&e, "/Users/a1a1a1a1-a1a1-a1a1-a1a1-a1a1a1a1a1a1").status,
        200
    );
    let r = get(&e, "/Users/ffffffffffffffffffffffffffffffff");
    assert_eq!(r.status, 404);
    assert_eq!(r.json().unwrap(), json!("User not found"));
    assert_eq!(
        get(&e, "/Users/00000000000000000000000000000000").status,
        400
    );
    assert_eq!(get(&e, "/Users/not-a-guid").status, 400);
    // API keys have no user.
    assert_eq!(get(&e, "/Users/Me").status, 400);
}

#[test]
fn user_without_provider_ids_emulates_a_plugin() {
    let e = start(world(json!({"users": [
        {"name": "admin", "id": ADMIN, "is_administrator": true},
        {"name": "ldap", "id": ALICE, "authentication_provider_id": "LDAP-Auth", "password_reset_provider_id": ""}
    ]})));
    let u = get(&e, &format!("/Users/{ALICE}")).json().unwrap();
    assert_eq!(u["Policy"]["AuthenticationProviderId"], "LDAP-Auth");
    assert!(
        u["Policy"].get("PasswordResetProviderId").is_none(),
        "missing, not null"
    );
    // Round-tripping such a policy fails like on the real server.
    let r = post(
        &e,
        &format!("/Users/{ALICE}/Policy"),
        Some(u["Policy"].clone()),
    );
    assert_eq!(r.status, 400);
}

#[test]
fn policy_post_is_a_full_replace_with_csharp_defaults() {
    let e = start(world(json!({})));
    let mut full = get(&e, &format!("/Users/{ADMIN}")).json().unwrap()["Policy"].clone();
    full["EnableRemoteAccess"] = json!(false);
    full["IsHidden"] = json!(false);
    full["EnableLyricManagement"] = json!(true);
    let r = post(&e, &format!("/Users/{ADMIN}/Policy"), Some(full.clone()));
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    let p = get(&e, &format!("/Users/{ADMIN}")).json().unwrap()["Policy"].clone();
    assert_eq!(p["EnableRemoteAccess"], false);
    assert_eq!(p["IsHidden"], false);
    assert_eq!(p["IsAdministrator"], true);
    // GetUserDto never fills it: GET shows false whatever was stored.
    assert_eq!(p["EnableLyricManagement"], false);

    // A sparse body: every left-out field takes the constructor default. Names bind
    // case-insensitively and numbers may come as strings.
    let r = post(
        &e,
        &format!("/Users/{ALICE}/Policy"),
        Some(json!({
            "authenticationProviderId": emulator::DEFAULT_AUTH_PROVIDER,
            "PasswordResetProviderId": emulator::DEFAULT_RESET_PROVIDER,
            "remoteclientbitratelimit": "2500000"
        })),
    );
    assert_eq!(r.status, 204);
    let p = get(&e, &format!("/Users/{ALICE}")).json().unwrap()["Policy"].clone();
    assert_eq!(p["RemoteClientBitrateLimit"], 2500000);
    assert_eq!(p["IsHidden"], true);
    assert_eq!(p["EnableRemoteAccess"], true);
    assert_eq!(p["IsAdministrator"], false);
    assert_eq!(p["EnableSharedDeviceControl"], true);
    assert_eq!(p["EnableContentDeletion"], false);
    assert_eq!(p["LoginAttemptsBeforeLockout"], -1);
    assert_eq!(p["SyncPlayAccess"], "CreateAndJoinGroups");
    assert_eq!(p["BlockedTags"], json!([]));
    assert!(p.get("MaxParentalRating").is_none(), "null is omitted");
    let st = state(&e);
    let alice = st["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["id"] == ALICE)
        .unwrap();
    assert_eq!(alice["policy"]["RemoteClientBitrateLimit"], 2500000);

    // Out of int32 range is a model-binding error.
    let r = post(
        &e,
        &format!("/Users/{ALICE}/Policy"),
        Some(json!({
        "AuthenticationProviderId": "a", "PasswordResetProviderId": "b",
        "RemoteClientBitrateLimit": 4294967296u64})),
    );
    assert_eq!(r.status, 400);
}

#[test]
fn policy_without_provider_ids_is_400_and_changes_nothing() {
    let e = start(world(json!({})));
    let good = get(&e, &format!("/Users/{ALICE}")).json().unwrap()["Policy"].clone();
    let cases: Vec<(Value, Vec<&str>)> = {
        let mut v = Vec::new();
        let mut a = good.clone();
        a.as_object_mut()
            .unwrap()
            .remove("AuthenticationProviderId");
        v.push((a, vec!["AuthenticationProviderId"]));
        let mut b = good.clone();
        b["PasswordResetProviderId"] = json!("");
        v.push((b, vec!["PasswordResetProviderId"]));
        let mut c = good.clone();
        c["AuthenticationProviderId"] = json!("  ");
        c["PasswordResetProviderId"] = Value::Null;
        v.push((
            c,
            vec!["AuthenticationProviderId", "PasswordResetProviderId"],
        ));
        v
    };
    for (mut body, fields) in cases {
        body["RemoteClientBitrateLimit"] = json!(1);
        let r = post(&e, &format!("/Users/{ALICE}/Policy"), Some(body));
        assert_eq!(r.status, 400);
        let v = r.json().unwrap();
        assert_eq!(v["status"], 400);
        assert_eq!(v["title"], "One or more validation errors occurred.");
        for f in fields {
            assert!(v["errors"][f].is_array(), "{f} in {v}");
        }
    }
    let p = get(&e, &format!("/Users/{ALICE}")).json().unwrap()["Policy"].clone();
    assert_eq!(p["RemoteClientBitrateLimit"], 3000000);
    // Validation runs before the user lookup; a valid body for an unknown user is 404.
    assert_eq!(
        post(
            &e,
            "/Users/ffffffffffffffffffffffffffffffff/Policy",
            Some(json!({}))
        )
        .status,
        400
    );
    let r = post(
        &e,
        "/Users/ffffffffffffffffffffffffffffffff/Policy",
        Some(good.clone()),
    );
    assert_eq!(r.status, 404);
    // A [FromBody] parameter needs a JSON content type.
    let r = http_from(
        None,
        &addr(&e),
        "POST",
        &format!("/Users/{ALICE}/Policy"),
        &[
            ("Authorization", &key_auth()),
            ("Content-Type", "text/plain"),
        ],
        Some(good.to_string().as_bytes()),
        T,
    )
    .unwrap();
    assert_eq!(r.status, 415);
    // Only administrators may change policies.
    let (tok, _) = login(&e, None, "bob", "c", "d");
    let r = req(
        &e,
        "POST",
        &format!("/Users/{ALICE}/Policy"),
        Some(&user_auth("c", "d", &tok)),
        Some(good),
    );
    assert_eq!(r.status, 403);
    assert!(r.body.is_empty());
}

// ---- sessions ------------------------------------------------------------------------------

/// Starts a playback by hand as a client would; returns (token, session id, PlaySessionId, info).
fn play_by_hand(
    e: &Emulator,
    src: Option<IpAddr>,
    user: &str,
    client: &str,
    dev: &str,
    caps_mc: bool,
) -> (String, String, Value) {
    let (tok, sid) = login(e, src, user, client, dev);
    let a = user_auth(client, dev, &tok);
    let caps = json!({"PlayableMediaTypes": ["Video"], "SupportedCommands": ["DisplayMessage"], "SupportsMediaControl": caps_mc});
    assert_eq!(
        req_from(
            e,
            src,
            "POST",
            "/Sessions/Capabilities/Full",
            Some(&a),
            Some(caps)
        )
        .status,
        204
    );
    let body = json!({"DeviceProfile": {"DirectPlayProfiles": [], "TranscodingProfiles": [{"Container": "ts", "Type": "Video"}]}, "UserId": ALICE});
    let r = req_from(
        e,
        src,
        "POST",
        &format!("/Items/{ITEM}/PlaybackInfo"),
        Some(&a),
        Some(body),
    );
    assert_eq!(r.status, 200);
    let info = r.json().unwrap();
    let psid = info["PlaySessionId"].as_str().unwrap().to_string();
    let start = json!({"ItemId": ITEM, "MediaSourceId": ITEM, "PlaySessionId": psid, "PositionTicks": 0, "PlayMethod": "Transcode", "CanSeek": true, "IsPaused": false, "AudioStreamIndex": 1, "SubtitleStreamIndex": -1});
    assert_eq!(
        req_from(e, src, "POST", "/Sessions/Playing", Some(&a), Some(start)).status,
        204
    );
    (tok, sid, info)
}

#[test]
fn sessions_show_playing_and_idle_sessions_with_the_real_fields() {
    let e = start(world(json!({})));
    let (tok, sid, _) = play_by_hand(&e, None, "alice", "Jellyfin Web", "devA", true);
    let (_, idle) = login(&e, None, "bob", "Jellyfin Web", "devB");
    assert!(is_hex32(&sid) && is_hex32(&idle) && sid != idle);
    // Same Client + DeviceId = same session id.
    let (_, again) = login(&e, None, "alice", "Jellyfin Web", "devA");
    assert_eq!(again, sid);

    let list = get(&e, "/Sessions").json().unwrap();
    assert!(pascal_keys(&list), "{list}");
    assert!(no_nulls(&list), "{list}");
    let s = session(&list, &sid);
    assert_eq!(s["UserId"], ALICE);
    assert_eq!(s["UserName"], "alice");
    assert_eq!(s["Client"], "Jellyfin Web");
    assert_eq!(s["DeviceId"], "devA");
    assert_eq!(s["RemoteEndPoint"], "127.0.0.1");
    assert_eq!(s["NowPlayingItem"]["Id"], ITEM);
    assert_eq!(s["NowPlayingItem"]["Type"], "Episode");
    assert_eq!(s["NowPlayingItem"]["RunTimeTicks"], 49234560000u64);
    assert!(s["NowPlayingItem"].get("MediaSources").is_none());
    assert!(s["NowPlayingItem"].get("Bitrate").is_none());
    let streams = s["NowPlayingItem"]["MediaStreams"].as_array().unwrap();
    let br: i64 = streams.iter().map(|m| m["BitRate"].as_i64().unwrap()).sum();
    assert_eq!(br, 8000000, "video + audio = source bitrate");
    assert_eq!(s["PlayState"]["PlayMethod"], "Transcode");
    assert_eq!(s["PlayState"]["MediaSourceId"], ITEM);
    assert_eq!(s["PlayState"]["SubtitleStreamIndex"], -1);
    assert_eq!(s["TranscodingInfo"]["Bitrate"], 8000000, "local: no limit");
    assert_eq!(
        s["TranscodingInfo"]["TranscodeReasons"],
        json!(["ContainerNotSupported"])
    );
    assert!(s["LastActivityDate"].as_str().unwrap().ends_with('Z'));
    assert_eq!(s["LastActivityDate"].as_str().unwrap().len(), 28);
    let i = session(&list, &idle);
    assert!(i.get("NowPlayingItem").is_none());
    assert!(i.get("TranscodingInfo").is_none());
    assert!(i["PlayState"].is_object(), "PlayState is always present");

    // Item lookup with MediaSources[].Bitrate.
    let item = get(&e, &format!("/Users/{ALICE}/Items/{ITEM}"))
        .json()
        .unwrap();
    assert_eq!(item["MediaSources"][0]["Bitrate"], 8000000);
    assert_eq!(item["MediaSources"][0]["Id"], ITEM);

    // Positions advance one second per second while playing, not while paused.
    let pos = |e: &Emulator| {
        session(&get(e, "/Sessions").json().unwrap(), &sid)["PlayState"]["PositionTicks"]
            .as_i64()
            .unwrap()
    };
    let (p0, t0) = (pos(&e), Instant::now());
    std::thread::sleep(Duration::from_millis(1500));
    let (p1, dt) = (pos(&e), t0.elapsed());
    let expect = dt.as_millis() as i64 * 10_000;
    assert!(
        (p1 - p0 - expect).abs() < 3_000_000,
        "advanced {} ticks in {dt:?}",
        p1 - p0
    );
    let a = user_auth("Jellyfin Web", "devA", &tok);
    let pause = json!({"ItemId": ITEM, "PositionTicks": 50_000_000, "IsPaused": true, "PlayMethod": "Transcode"});
    assert_eq!(
        req(
            &e,
            "POST",
            "/Sessions/Playing/Progress",
            Some(&a),
            Some(pause)
        )
        .status,
        204
    );
    std::thread::sleep(Duration::from_millis(600));
    let s = session(&get(&e, "/Sessions").json().unwrap(), &sid).clone();
    assert_eq!(s["PlayState"]["PositionTicks"], 50_000_000);
    assert_eq!(s["PlayState"]["IsPaused"], true);
    assert!(s["LastPausedDate"].is_string());
    // Stopped clears the item and the transcode.
    let stop = json!({"ItemId": ITEM, "PositionTicks": 50_000_000});
    assert_eq!(
        req(
            &e,
            "POST",
            "/Sessions/Playing/Stopped",
            Some(&a),
            Some(stop)
        )
        .status,
        204
    );
    let s = session(&get(&e, "/Sessions").json().unwrap(), &sid).clone();
    assert!(s.get("NowPlayingItem").is_none() && s.get("TranscodingInfo").is_none());

    // Filters.
    let f = get(&e, "/Sessions?deviceId=DEVA").json().unwrap();
    assert_eq!(f.as_array().unwrap().len(), 1);
    let f = get(&e, &format!("/Sessions?controllableByUserId={ADMIN}"))
        .json()
        .unwrap();
    assert_eq!(
        f,
        json!([]),
        "nobody polls the command channel: nothing controllable"
    );
    // A non-admin sees only its own sessions.
    let bobs = login(&e, None, "bob", "c2", "d2").0;
    let l = req(
        &e,
        "GET",
        "/Sessions",
        Some(&user_auth("c2", "d2", &bobs)),
        None,
    )
    .json()
    .unwrap();
    assert!(l.as_array().unwrap().iter().all(|s| s["UserName"] == "bob"));
}

#[test]
fn remote_end_point_is_the_tcp_peer_of_the_latest_request() {
    let e = start(world(json!({})));
    let (tok, sid, _) = play_by_hand(&e, remote_ip(), "alice", "App", "dev", false);
    let s = session(&get(&e, "/Sessions").json().unwrap(), &sid).clone();
    assert_eq!(s["RemoteEndPoint"], "127.0.0.2");
    let a = user_auth("App", "dev", &tok);
    let pr = json!({"ItemId": ITEM, "PositionTicks": 1});
    assert_eq!(
        req_from(
            &e,
            Some(IpAddr::from([127, 0, 0, 3])),
            "POST",
            "/Sessions/Playing/Progress",
            Some(&a),
            Some(pr)
        )
        .status,
        204
    );
    let s = session(&get(&e, "/Sessions").json().unwrap(), &sid).clone();
    assert_eq!(s["RemoteEndPoint"], "127.0.0.3");
}

#[test]
fn api_key_caller_becomes_a_session_once_it_sends_a_command() {
    let e = start(world(json!({})));
    let (_, target, _) = play_by_hand(&e, None, "alice", "App", "dev", false);
    let before = get(&e, "/Sessions").json().unwrap();
    assert_eq!(
        before.as_array().unwrap().len(),
        1,
        "GET /Sessions creates no session"
    );
    let r = post(
        &e,
        &format!("/Sessions/{target}/Message"),
        Some(json!({"Text": "hi", "TimeoutMs": 1000})),
    );
    assert_eq!(r.status, 204);
    let list = get(&e, "/Sessions").json().unwrap();
    let own = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["Client"] == "jellydemon")
        .expect("own session");
    assert_eq!(
        own["DeviceId"], "e2a9f0c4b1d84f6a9c3e7b5d1f2a4c68",
        "server id by default"
    );
    assert_eq!(own["UserId"], "00000000000000000000000000000000");
    assert!(own.get("NowPlayingItem").is_none());
    // A DeviceId in the header names the device instead.
    let auth = format!("MediaBrowser Client=\"x\", DeviceId=\"router-1\", Token=\"{KEY}\"");
    assert_eq!(
        req(
            &e,
            "POST",
            &format!("/Sessions/{target}/Playing/Pause"),
            Some(&auth),
            None
        )
        .status,
        204
    );
    let list = get(&e, "/Sessions").json().unwrap();
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["DeviceId"] == "router-1" && s["Client"] == "jellydemon"));
}

#[test]
fn commands_answer_204_and_reach_only_remote_controllable_sessions() {
    let e = start(world(json!({})));
    let (_, sid, _) = play_by_hand(&e, None, "alice", "App", "dev", false);
    // Unknown session ids (case-sensitive) are 404 text/plain.
    for path in [
        "/Sessions/ffffffffffffffffffffffffffffffff/Playing/Stop".to_string(),
        format!("/Sessions/{}/Playing/Stop", sid.to_uppercase()),
        format!("/Sessions/nope/Playing?playCommand=PlayNow&itemIds={ITEM}"),
    ] {
        let r = post(&e, &path, None);
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.header("Content-Type"), Some("text/plain"));
    }
    assert_eq!(
        post(
            &e,
            &format!("/Sessions/{sid}/Message"),
            Some(json!({"Header": "x"}))
        )
        .status,
        400
    );
    assert_eq!(
        post(
            &e,
            &format!("/Sessions/{sid}/Message"),
            Some(json!({"Text": ""}))
        )
        .status,
        400
    );
    assert_eq!(
        post(&e, &format!("/Sessions/{sid}/Playing?itemIds={ITEM}"), None).status,
        400
    );
    // No remote control: 204 and nothing happens.
    for path in [
        format!("/Sessions/{sid}/Playing/Stop"),
        format!("/Sessions/{sid}/Playing?playCommand=PlayNow&itemIds={ITEM}&startPositionTicks=10"),
    ] {
        let r = post(&e, &path, None);
        assert_eq!(r.status, 204, "{path}");
        assert!(r.body.is_empty());
    }
    assert_eq!(
        post(
            &e,
            &format!("/Sessions/{sid}/Message"),
            Some(json!({"Text": "hello"}))
        )
        .status,
        204
    );
    let s = state(&e);
    let me = s["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == sid)
        .unwrap();
    assert_eq!(me["commands"], json!([]));
    assert_eq!(me["restarts"], 0);
    assert_eq!(me["now_playing_item_id"], ITEM, "still playing");
    let l = get(&e, "/Sessions").json().unwrap();
    assert_eq!(session(&l, &sid)["SupportsRemoteControl"], false);
    // Even a client that advertises media control is not controllable until it is connected.
    let (_, sid2, _) = play_by_hand(&e, None, "bob", "App", "dev2", true);
    assert_eq!(
        session(&get(&e, "/Sessions").json().unwrap(), &sid2)["SupportsRemoteControl"],
        false
    );
    let r = req(
        &e,
        "GET",
        &format!("/_emu/commands?session={sid2}&wait_ms=0"),
        None,
        None,
    );
    assert_eq!(r.json().unwrap(), json!([]));
    assert_eq!(
        session(&get(&e, "/Sessions").json().unwrap(), &sid2)["SupportsRemoteControl"],
        true
    );
    assert_eq!(
        post(
            &e,
            &format!("/Sessions/{sid2}/Message"),
            Some(json!({"Text": "hello", "TimeoutMs": 5000}))
        )
        .status,
        204
    );
    assert_eq!(
        post(&e, &format!("/Sessions/{sid2}/Playing/Stop"), None).status,
        204
    );
    let r = req(
        &e,
        "GET",
        &format!("/_emu/commands?session={sid2}&wait_ms=2000"),
        None,
        None,
    );
    let cmds = r.json().unwrap();
    assert_eq!(cmds[0]["MessageType"], "GeneralCommand");
    assert_eq!(cmds[0]["Data"]["Name"], "DisplayMessage");
    assert_eq!(cmds[0]["Data"]["Arguments"]["Text"], "hello");
    assert_eq!(
        cmds[0]["Data"]["Arguments"]["Header"],
        "Message from Server"
    );
    assert_eq!(cmds[0]["Data"]["Arguments"]["TimeoutMs"], "5000");
    assert_eq!(cmds[1]["MessageType"], "Playstate");
    assert_eq!(cmds[1]["Data"]["Command"], "Stop");
    let body = json!({"Name": "SetMaxStreamingBitrate", "Arguments": {"Bitrate": "3000000"}, "ControllingUserId": BOB});
    assert_eq!(
        post(&e, &format!("/Sessions/{sid2}/Command"), Some(body)).status,
        204
    );
    let cmds = req(
        &e,
        "GET",
        &format!("/_emu/commands?session={sid2}&wait_ms=2000"),
        None,
        None,
    )
    .json()
    .unwrap();
    assert_eq!(cmds[0]["Data"]["Name"], "SetMaxStreamingBitrate");
    assert_eq!(cmds[0]["Data"]["Arguments"]["Bitrate"], "3000000");
    assert_eq!(
        cmds[0]["Data"]["ControllingUserId"],
        "00000000000000000000000000000000"
    );
}

#[test]
fn long_poll_returns_as_soon_as_a_command_arrives() {
    let e = start(world(json!({})));
    let (_, sid, _) = play_by_hand(&e, None, "alice", "App", "dev", true);
    // Connect the controller first so the command is delivered, not dropped.
    req(
        &e,
        "GET",
        &format!("/_emu/commands?session={sid}&wait_ms=0"),
        None,
        None,
    );
    let a = addr(&e);
    let sid2 = sid.clone();
    let t0 = Instant::now();
    let h = std::thread::spawn(move || {
        http_from(
            None,
            &a,
            "GET",
            &format!("/_emu/commands?session={sid2}&wait_ms=20000"),
            &[],
            None,
            Duration::from_secs(30),
        )
        .unwrap()
    });
    wait_state(&e, "poll in flight", |s| {
        s["sessions"][0]["supports_remote_control"] == true
    });
    let r = post(&e, &format!("/Sessions/{sid}/Playing?playCommand=PlayNow&itemIds={ITEM}&startPositionTicks=123&mediaSourceId={ITEM}&audioStreamIndex=1&subtitleStreamIndex=-1"), None);
    assert_eq!(r.status, 204);
    let cmds = h.join().unwrap().json().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(15));
    assert_eq!(cmds[0]["MessageType"], "Play");
    assert_eq!(cmds[0]["Data"]["PlayCommand"], "PlayNow");
    assert_eq!(cmds[0]["Data"]["ItemIds"], json!([ITEM]));
    assert_eq!(cmds[0]["Data"]["StartPositionTicks"], 123);
    assert_eq!(cmds[0]["Data"]["MediaSourceId"], ITEM);
    assert_eq!(cmds[0]["Data"]["AudioStreamIndex"], 1);
    assert_eq!(cmds[0]["Data"]["SubtitleStreamIndex"], -1);
}

// ---- limits --------------------------------------------------------------------------------

#[test]
fn max_bitrate_follows_media_info_helper() {
    use emulator::max_bitrate as m;
    // (client, user, server, local) -> result
    let cases = [
        (None, 0, 0, false, None),
        (None, 3_000_000, 0, false, Some(3_000_000)),
        (None, 0, 2_000_000, false, Some(2_000_000)),
        // A user limit replaces the server one, even when higher.
        (None, 5_000_000, 2_000_000, false, Some(5_000_000)),
        (None, -1, 2_000_000, false, Some(2_000_000)),
        (Some(1_000_000), 3_000_000, 0, false, Some(1_000_000)),
        (Some(9_000_000), 3_000_000, 0, false, Some(3_000_000)),
        // Local callers keep only their own request.
        (None, 3_000_000, 2_000_000, true, None),
        (Some(9_000_000), 3_000_000, 0, true, Some(9_000_000)),
    ];
    for (c, u, s, l, want) in cases {
        assert_eq!(m(c, u, s, l), want, "{c:?} {u} {s} {l}");
    }
    let subnets = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let d = subnets(&[]);
    assert!(emulator::is_in_local_network(ip("192.168.1.5"), &d));
    assert!(emulator::is_in_local_network(ip("10.1.2.3"), &d));
    assert!(emulator::is_in_local_network(ip("172.20.0.1"), &d));
    assert!(emulator::is_in_local_network(ip("127.0.0.2"), &d));
    assert!(
        !emulator::is_in_local_network(ip("100.64.0.1"), &d),
        "CGNAT is remote"
    );
    assert!(!emulator::is_in_local_network(ip("203.0.113.9"), &d));
    assert!(!emulator::is_in_local_network(ip("2001:db8::1"), &d));
    let only = subnets(&["192.168.0.0/16", "!192.168.9.0/24"]);
    assert!(
        emulator::is_in_local_network(ip("127.0.0.1"), &only),
        "loopback always local"
    );
    assert!(!emulator::is_in_local_network(ip("127.0.0.2"), &only));
    assert!(!emulator::is_in_local_network(ip("10.0.0.1"), &only));
    assert!(
        !emulator::is_in_local_network(ip("192.168.9.3"), &only),
        "excluded"
    );
    assert!(emulator::is_in_local_network(ip("192.168.1.3"), &only));
}

fn remote_world(extra: Value) -> World {
    let mut base = json!({"local_network_subnets": ["192.168.0.0/16"]});
    if let (Value::Object(b), Value::Object(e)) = (&mut base, extra) {
        b.extend(e);
    }
    world(base)
}

#[test]
fn playback_info_applies_the_limit_only_to_remote_callers() {
    let e = start(remote_world(json!({})));
    // Remote: the user limit; the source is over it, so no direct play and a transcode at 3M.
    let (_, _, info) = play_by_hand(&e, remote_ip(), "alice", "App", "r1", false);
    let src = &info["MediaSources"][0];
    assert_eq!(src["Bitrate"], 8000000);
    assert_eq!(src["SupportsDirectPlay"], false);
    let url = src["TranscodingUrl"].as_str().unwrap();
    let param = |n: &str| -> i64 {
        url.split(['?', '&'])
            .find_map(|kv| kv.strip_prefix(&format!("{n}=")))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(
        param("VideoBitrate") + param("AudioBitrate"),
        3000000,
        "{url}"
    );
    assert!(url.contains("ContainerBitrateExceedsLimit"));
    // Local: no limit.
    let (_, _, info) = play_by_hand(&e, None, "alice", "App", "l1", false);
    let url = info["MediaSources"][0]["TranscodingUrl"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(url.contains("VideoBitrate=7808000"), "{url}");
    // A direct-play-capable client under the limit may direct play.
    let (tok, _) = login(&e, remote_ip(), "bob", "App", "r2");
    let a = user_auth("App", "r2", &tok);
    let body =
        json!({"DeviceProfile": {"DirectPlayProfiles": [{"Container": "mkv", "Type": "Video"}]}});
    let info = req_from(
        &e,
        remote_ip(),
        "POST",
        &format!("/Items/{ITEM}/PlaybackInfo"),
        Some(&a),
        Some(body.clone()),
    )
    .json()
    .unwrap();
    assert_eq!(
        info["MediaSources"][0]["SupportsDirectPlay"], true,
        "bob has no limit"
    );
    assert!(info["MediaSources"][0].get("TranscodingUrl").is_none());
    // The server-wide limit applies to users whose own limit is 0.
    assert_eq!(
        req(
            &e,
            "POST",
            "/_emu/server",
            None,
            Some(json!({"remote_client_bitrate_limit": 2000000}))
        )
        .status,
        204
    );
    let info = req_from(
        &e,
        remote_ip(),
        "POST",
        &format!("/Items/{ITEM}/PlaybackInfo"),
        Some(&a),
        Some(body),
    )
    .json()
    .unwrap();
    assert_eq!(info["MediaSources"][0]["SupportsDirectPlay"], false);
    assert!(info["MediaSources"][0]["TranscodingUrl"]
        .as_str()
        .unwrap()
        .contains("VideoBitrate=1808000"));
    let s = state(&e);
    let bob = s["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["device_id"] == "r2")
        .unwrap();
    assert_eq!(bob["playback_info_count"], 2);
    assert_eq!(bob["negotiated_limit_bps"], 2000000);
}

#[test]
fn a_new_limit_reaches_a_stream_only_through_a_restart() {
    let e = start(remote_world(json!({})));
    let mut o = viewer_opts(&e, "alice", "Viewer", "v-restart");
    o.bind = remote_ip();
    let v = BgViewer::start(o);
    let sid_of = |s: &Value| {
        s["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["device_id"] == "v-restart")
            .cloned()
    };
    let s = wait_state(&e, "viewer playing and connected", |s| {
        sid_of(s).is_some_and(|x| {
            x["now_playing_item_id"] == ITEM
                && x["supports_remote_control"] == true
                && x["bytes_sent"].as_u64() > Some(0)
        })
    });
    let me = sid_of(&s).unwrap();
    let sid = me["id"].as_str().unwrap().to_string();
    assert_eq!(me["negotiated_limit_bps"], 3000000);
    assert_eq!(me["stream_bps"], 3000000);

    // A new policy does not touch the running stream.
    let mut p = get(&e, &format!("/Users/{ALICE}")).json().unwrap()["Policy"].clone();
    p["RemoteClientBitrateLimit"] = json!(1500000);
    assert_eq!(
        post(&e, &format!("/Users/{ALICE}/Policy"), Some(p)).status,
        204
    );
    let l = get(&e, "/Sessions").json().unwrap();
    assert_eq!(session(&l, &sid)["TranscodingInfo"]["Bitrate"], 3000000);
    assert_eq!(sid_of(&state(&e)).unwrap()["playback_info_count"], 1);

    // Stop + PlayNow at the same position = a restart with a new PlaybackInfo.
    let pos = session(&l, &sid)["PlayState"]["PositionTicks"]
        .as_i64()
        .unwrap();
    assert_eq!(
        post(&e, &format!("/Sessions/{sid}/Playing/Stop"), None).status,
        204
    );
    let r = post(&e, &format!("/Sessions/{sid}/Playing?playCommand=PlayNow&itemIds={ITEM}&startPositionTicks={pos}&mediaSourceId={ITEM}&audioStreamIndex=1&subtitleStreamIndex=-1"), None);
    assert_eq!(r.status, 204);
    let s = wait_state(&e, "restart negotiated", |s| {
        sid_of(s).is_some_and(|x| x["playback_info_count"] == 2 && x["now_playing_item_id"] == ITEM)
    });
    let me = sid_of(&s).unwrap();
    assert_eq!(me["negotiated_limit_bps"], 1500000);
    assert_eq!(me["restarts"], 1);
    assert_eq!(me["commands"], json!(["Stop", "Play"]));
    let l = get(&e, "/Sessions").json().unwrap();
    let sess = session(&l, &sid);
    assert_eq!(sess["TranscodingInfo"]["Bitrate"], 1500000);
    assert!(
        sess["PlayState"]["PositionTicks"].as_i64().unwrap() >= pos,
        "position preserved"
    );
    assert_eq!(sess["RemoteEndPoint"], "127.0.0.2");
    let sum = v.finish();
    assert_eq!(sum.restarts, 1);
    assert_eq!(sum.negotiated_bps, 1500000);
}

// ---- faults --------------------------------------------------------------------------------

#[test]
fn fault_modes_behave_as_documented() {
    let e = start(world(json!({})));
    let fault = |v: Value| assert_eq!(req(&e, "POST", "/_emu/fault", None, Some(v)).status, 204);

    fault(json!({"mode": "status500"}));
    let r = get(&e, "/Sessions");
    assert_eq!(r.status, 500);
    assert_eq!(r.header("Content-Type"), Some("text/plain"));
    // Scope "api" leaves the viewers alone.
    login(&e, None, "alice", "c", "d");

    fault(json!({"mode": "garbage"}));
    let r = get(&e, "/Sessions");
    assert_eq!(r.status, 200);
    assert!(r.json().is_err(), "garbage must not parse");

    fault(json!({"mode": "slow", "delay_ms": 700}));
    let t0 = Instant::now();
    assert_eq!(get(&e, "/System/Info").status, 200);
    assert!(t0.elapsed() >= Duration::from_millis(700));

    // "late": the change is made at once, the answer comes after the delay; with scope
    // "writes", reads stay quick.
    fault(json!({"mode": "late", "delay_ms": 700, "scope": "writes"}));
    let mut p = get(&e, &format!("/Users/{BOB}")).json().unwrap()["Policy"].clone();
    p["RemoteClientBitrateLimit"] = json!(2000000);
    let done = std::sync::atomic::AtomicBool::new(false);
    let t0 = Instant::now();
    std::thread::scope(|sc| {
        let poster = sc.spawn(|| {
            let r = post(&e, &format!("/Users/{BOB}/Policy"), Some(p));
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            r.status
        });
        // Applied while the answer is still owed.
        wait_state(&e, "the late write applied", |s| {
            s["users"][2]["policy"]["RemoteClientBitrateLimit"] == 2000000
        });
        assert!(
            !done.load(std::sync::atomic::Ordering::SeqCst),
            "answered before the delay"
        );
        let t1 = Instant::now();
        assert_eq!(get(&e, "/System/Info").status, 200);
        assert!(
            t1.elapsed() < Duration::from_millis(500),
            "reads are not delayed"
        );
        assert_eq!(poster.join().unwrap(), 204);
    });
    assert!(t0.elapsed() >= Duration::from_millis(700));

    fault(json!({"mode": "starting"}));
    let r = get(&e, "/Sessions");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("Retry-After"), Some("005"));
    let r = req(&e, "GET", "/System/Info/Public", None, None);
    assert_eq!(r.status, 200);
    let v = r.json().unwrap();
    assert_eq!(v["version"], "10.11.11");
    assert_eq!(v["startupWizardCompleted"], false);
    assert!(v.get("Version").is_none(), "camelCase while starting");

    fault(json!({"mode": "huge", "size_bytes": 3000000}));
    let r = get(&e, "/Sessions");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 3000000);

    fault(json!({"mode": "status500", "scope": "all"}));
    let auth = viewer::auth_header("c", "d", "e", None);
    let r = req(
        &e,
        "POST",
        "/Users/AuthenticateByName",
        Some(&auth),
        Some(json!({"Username": "bob"})),
    );
    assert_eq!(r.status, 500);

    fault(json!({"mode": "none"}));
    assert_eq!(get(&e, "/Sessions").status, 200);
    assert_eq!(
        req(
            &e,
            "POST",
            "/_emu/fault",
            None,
            Some(json!({"mode": "explode"}))
        )
        .status,
        400
    );
    // The request log records what the daemon saw.
    let s = state(&e);
    let statuses: Vec<u64> = s["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["path"] == "/Sessions")
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [500, 200, 503, 200, 200]);
}

// ---- streams and the viewer ------------------------------------------------------------------

#[test]
fn the_stream_is_bursty_segments_at_the_negotiated_rate() {
    let e = start(remote_world(
        json!({"segment_ms": 1000, "prefill_segments": 2}),
    ));
    let (_, _, info) = play_by_hand(&e, remote_ip(), "alice", "App", "burst", false);
    let url = info["MediaSources"][0]["TranscodingUrl"]
        .as_str()
        .unwrap()
        .to_string();
    let mut st = viewer::http_open_from(remote_ip(), &addr(&e), "GET", &url, &[], None, T).unwrap();
    assert_eq!(st.status, 200);
    // Record when bytes arrive, for 6 s.
    let t0 = Instant::now();
    let mut arrivals: Vec<(Duration, usize)> = Vec::new();
    let mut buf = vec![0u8; 65536];
    while t0.elapsed() < Duration::from_secs(6) {
        use std::io::Read;
        let n = st.reader.read(&mut buf).unwrap();
        assert!(n > 0, "stream ended early");
        arrivals.push((t0.elapsed(), n));
    }
    let _ = st.socket.shutdown(std::net::Shutdown::Both);
    let seg = 3_000_000 / 8; // bytes per 1 s segment at the 3 Mb/s limit
    let by = |t: f64| {
        arrivals
            .iter()
            .filter(|(d, _)| d.as_secs_f64() < t)
            .map(|(_, n)| n)
            .sum::<usize>()
    };
    // The prefill arrives at once.
    assert!(by(0.5) >= 2 * seg, "prefill: {} bytes by 0.5 s", by(0.5));
    // Then one segment per second: steady rate over 1.5 s..5.5 s is 3 Mb/s within 15 %.
    let steady = (by(5.5) - by(1.5)) as f64 * 8.0 / 4.0;
    assert!((steady - 3e6).abs() < 0.15 * 3e6, "steady {steady} b/s");
    // Bursty: data arrives in few 100 ms windows, far above the media rate while it does.
    let mut windows = [0usize; 60];
    for (d, n) in &arrivals {
        let i = (d.as_millis() / 100) as usize;
        if i < 60 {
            windows[i] += n;
        }
    }
    let busy = windows[15..55].iter().filter(|w| **w > 0).count();
    assert!(busy <= 16, "{busy} of 40 windows carried data: not bursty");
    let peak = windows[15..55].iter().max().unwrap() * 8 * 10;
    assert!(peak as f64 > 2.5 * 3e6, "peak {peak} b/s");
}

#[test]
fn a_direct_play_client_ignores_the_limit() {
    let e = start(remote_world(json!({})));
    let mut o = viewer_opts(&e, "alice", "Direct", "v-direct");
    o.bind = remote_ip();
    o.direct = true;
    o.seconds = Some(2);
    let sum = viewer::run(&o, &AtomicBool::new(false), &mut std::io::sink()).unwrap();
    assert_eq!(sum.negotiated_bps, 8000000, "the source bitrate");
    let s = state(&e);
    let me = s["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["device_id"] == "v-direct")
        .unwrap();
    assert_eq!(
        me["negotiated_limit_bps"], 3000000,
        "the server did try to limit it"
    );
    assert!(
        me["bytes_sent"].as_u64().unwrap() >= 8000000 / 8 * 2,
        "prefill of 2 s at 8 Mb/s at least"
    );
    assert!(
        me.get("now_playing_item_id").is_none(),
        "viewer reported Stopped"
    );
}

#[test]
fn a_viewer_streams_at_the_expected_rate_without_stalls() {
    let e = start(remote_world(json!({})));
    let mut o = viewer_opts(&e, "alice", "Viewer", "v-rate");
    o.bind = remote_ip();
    o.seconds = Some(7);
    let path = std::env::temp_dir().join(format!("emu-stats-{}.jsonl", std::process::id()));
    let mut f = std::fs::File::create(&path).unwrap();
    let sum = viewer::run(&o, &AtomicBool::new(false), &mut f).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 6, "{text}");
    assert_eq!(lines, sum.lines);
    for k in [
        "bytes",
        "rate_bps",
        "negotiated_bps",
        "stalls",
        "stall_ms",
        "restarts",
        "messages",
    ] {
        assert!(lines[0].get(k).is_some(), "{k} missing in {}", lines[0]);
    }
    assert_eq!(sum.negotiated_bps, 3000000);
    assert_eq!(sum.stalls, 0);
    assert_eq!(sum.stall_ms, 0);
    // After the 2 s prefill, the rate is the negotiated one within 15 %.
    let at = |i: usize| {
        (
            lines[i]["t_ms"].as_f64().unwrap(),
            lines[i]["bytes"].as_f64().unwrap(),
        )
    };
    let (t1, b1) = at(1);
    let (t2, b2) = at(lines.len() - 1);
    let rate = (b2 - b1) * 8.0 / ((t2 - t1) / 1000.0);
    assert!((rate - 3e6).abs() < 0.15 * 3e6, "rate {rate} b/s; {text}");
    assert!(
        lines.iter().skip(2).all(|l| l["state"] == "playing"),
        "{text}"
    );
}

#[test]
fn the_buffer_model_counts_stalls() {
    use viewer::{Buffer, PlayerState};
    let dt = Duration::from_millis(100);
    let rate = 8_000_000.0; // 1 MB/s
                            // Starts after 2 s of media.
    let mut b = Buffer::new(rate);
    b.step(dt, 1_900_000, false, false);
    assert_eq!(b.state, PlayerState::Buffering);
    b.step(dt, 200_000, false, false);
    assert_eq!(b.state, PlayerState::Playing);
    // Fed at the media rate: never stalls.
    for _ in 0..100 {
        b.step(dt, 100_000, false, false);
    }
    assert_eq!((b.stalls, b.state), (0, PlayerState::Playing));
    // Starved: stalls once, and the stall lasts until 2 s are buffered again.
    for _ in 0..30 {
        b.step(dt, 0, false, false);
    }
    assert_eq!((b.stalls, b.state), (1, PlayerState::Stalled));
    let ms = b.stall_ms;
    assert!(ms > 0);
    b.step(dt, 2_000_000, false, false);
    assert_eq!(b.state, PlayerState::Playing);
    // Paused: nothing is consumed.
    let before = b.buffered_bytes;
    b.step(dt, 0, false, true);
    assert_eq!(b.buffered_bytes, before);
    // Running dry at the end of the stream is not a stall.
    for _ in 0..40 {
        b.step(dt, 0, true, false);
    }
    assert_eq!((b.stalls, b.state), (1, PlayerState::Ended));
}

#[test]
fn world_files_are_validated_with_clear_errors() {
    let bad = [
        (r#"{"users": [{"name": "x", "id": "123"}]}"#, "hex digits"),
        (
            r#"{"items": [{"id": "6f1c0a2b9d8e4f7a8b3c2d1e0f9a8b7c", "name": "x", "bitrate": 100, "audio_bitrate": 200}]}"#,
            "audio_bitrate",
        ),
        (r#"{"local_network_subnets": ["nonsense"]}"#, "CIDR"),
        (r#"{"bogus": 1}"#, "unknown field"),
        ("not json", "world file"),
    ];
    for (text, want) in bad {
        let err = World::parse(text).unwrap_err();
        assert!(err.contains(want), "{text}: {err}");
    }
    let w = World::parse("{}").unwrap();
    assert_eq!(w.version, "10.11.11");
    World::load("tests/support/worlds/demo.json").expect("the shipped demo world parses");
}

#[test]
fn viewer_options_are_checked() {
    let args = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    let base = "--server 127.0.0.1:8096 --user alice --item x --client c --device-id d";
    let o = viewer::ViewerOpts::parse(&args(base)).unwrap();
    assert!(o.remote_control && !o.direct && o.seconds.is_none() && o.max_bitrate.is_none());
    let o = viewer::ViewerOpts::parse(&args(&format!(
        "{base} --remote-control no --method direct --max-bitrate 4000000 --seconds 3 --stats f --bind 127.0.0.2"
    )))
    .unwrap();
    assert!(!o.remote_control && o.direct);
    assert_eq!(
        (o.max_bitrate, o.seconds, o.stats.as_deref()),
        (Some(4000000), Some(3), Some("f"))
    );
    for (extra, want) in [
        ("--remote-control maybe", "yes|no"),
        ("--method copy", "transcode|direct"),
        ("--max-bitrate -5", "positive"),
        ("--bind nowhere", "not an IP"),
        ("--frobnicate 1", "unknown option"),
        ("--seconds", "needs a value"),
    ] {
        let err = viewer::ViewerOpts::parse(&args(&format!("{base} {extra}"))).unwrap_err();
        assert!(err.contains(want), "{extra}: {err}");
    }
    let err = viewer::ViewerOpts::parse(&args("--server a:1")).unwrap_err();
    assert!(err.contains("--user is required"), "{err}");
}

#[test]
fn every_listen_address_serves_the_same_server() {
    let e = Emulator::start(
        world(json!({})),
        &["127.0.0.1:0".to_string(), "127.0.0.1:0".to_string()],
    )
    .unwrap();
    assert_eq!(e.addrs.len(), 2);
    assert_ne!(e.addrs[0], e.addrs[1]);
    for a in &e.addrs {
        let r = http_from(
            None,
            &a.to_string(),
            "GET",
            "/Users",
            &[("Authorization", &key_auth())],
            None,
            T,
        )
        .unwrap();
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        state(&e)["requests"].as_array().unwrap().len(),
        2,
        "one state for both"
    );
    assert!(Emulator::start(world(json!({})), &[]).is_err());
    assert!(Emulator::start(world(json!({})), &["not-an-address".to_string()]).is_err());
}

#[test]
fn a_player_that_stops_reporting_is_stopped_and_configuration_is_readable() {
    let e = start(world(
        json!({"playback_checkin_timeout_s": 1, "remote_client_bitrate_limit": 7000000}),
    ));
    let (_, sid, _) = play_by_hand(&e, None, "alice", "App", "gone", false);
    assert!(session(&get(&e, "/Sessions").json().unwrap(), &sid)
        .get("NowPlayingItem")
        .is_some());
    std::thread::sleep(Duration::from_millis(2100));
    let l = get(&e, "/Sessions").json().unwrap();
    assert!(session(&l, &sid).get("NowPlayingItem").is_none(), "{l}");
    let c = get(&e, "/System/Configuration").json().unwrap();
    assert_eq!(c["RemoteClientBitrateLimit"], 7000000);
    let n = get(&e, "/System/Configuration/network").json().unwrap();
    assert_eq!(n["LocalNetworkSubnets"], json!([]));
    assert_eq!(
        req(&e, "GET", "/System/Configuration", None, None).status,
        401
    );
}

#[test]
fn helpers_format_like_the_server() {
    use std::time::{SystemTime, UNIX_EPOCH};
    let t = UNIX_EPOCH + Duration::new(1_763_756_047, 512_345_600);
    assert_eq!(emulator::format_date(t), "2025-11-21T20:14:07.5123456Z");
    assert_eq!(
        emulator::format_date(UNIX_EPOCH + Duration::from_secs(951_782_400)),
        "2000-02-29T00:00:00.0000000Z"
    );
    let now = emulator::format_date(SystemTime::now());
    assert_eq!(now.len(), 28);
    let a = emulator::hex_key("Jellyfin Webdev1");
    assert!(is_hex32(&a));
    assert_eq!(a, emulator::hex_key("Jellyfin Webdev1"));
    assert_ne!(a, emulator::hex_key("Jellyfin Webdev2"));
    assert_eq!(
        emulator::strip_nulls(json!({"a": null, "b": [{"c": null, "d": 1}]})),
        json!({"b": [{"d": 1}]})
    );
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(
        emulator::normalize_ip(ip("::ffff:203.0.113.45")),
        ip("203.0.113.45")
    );
    assert_eq!(emulator::normalize_ip(ip("2001:db8::1")), ip("2001:db8::1"));
    assert_eq!(emulator::normalize_ip(ip("10.0.0.1")), ip("10.0.0.1"));
    assert_eq!(
        emulator::transcode_split(3_000_000, 640_000),
        (2_808_000, 192_000)
    );
    assert_eq!(
        emulator::transcode_split(200_000, 640_000),
        (100_000, 100_000)
    );
}

#[test]
fn a_keep_alive_client_like_the_daemon_gets_the_same_answers() {
    let e = start(world(json!({})));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = |p: &str| format!("{}{p}", e.url());
    let auth = format!("MediaBrowser Client=\"jellydemon\", Device=\"OpenWrt\", DeviceId=\"r1\", Version=\"0.1.0\", Token=\"{KEY}\"");
    for _ in 0..3 {
        let mut r = agent
            .get(&url("/Sessions"))
            .header("Authorization", &auth)
            .call()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.body_mut().read_to_string().unwrap(), "[]");
    }
    let mut r = agent
        .get(&url(&format!("/Users/{ALICE}")))
        .header("Authorization", &auth)
        .call()
        .unwrap();
    let user: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    let mut policy = user["Policy"].clone();
    policy["RemoteClientBitrateLimit"] = json!(4000000);
    let r = agent
        .post(&url(&format!("/Users/{ALICE}/Policy")))
        .header("Authorization", &auth)
        .header("Content-Type", "application/json")
        .send(policy.to_string())
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let r = agent.get(&url("/System/Info")).call().unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let s = state(&e);
    assert_eq!(s["users"][1]["policy"]["RemoteClientBitrateLimit"], 4000000);
    assert_eq!(s["requests"].as_array().unwrap().len(), 6);
}
