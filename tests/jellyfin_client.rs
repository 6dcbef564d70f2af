//! The Jellyfin client against a real HTTP server on 127.0.0.1 answering with the shapes the
//! real server sends (reference/jellyfin-api.md): sessions of 10.8 to 12.0, startup 503s, the
//! four error-body shapes, garbage, huge and silent answers.

use std::io::Read;
use std::net::{IpAddr, TcpListener};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use jellydemon::config::Secret;
use jellydemon::jellyfin::{Client, Error, MediaServer, PlayRequest};
use serde_json::{json, Map, Value};
use tiny_http::{Header, Response, ResponseBox, Server, StatusCode};

const KEY: &str = "0123456789abcdef0123456789abcdef";

struct Recorded {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A tiny_http server answering every request with `handler`; it records what it received.
struct Fake {
    server: Arc<Server>,
    rx: Receiver<Recorded>,
    thread: Option<JoinHandle<()>>,
}

impl Fake {
    fn new(handler: impl Fn(&Recorded) -> ResponseBox + Send + 'static) -> Fake {
        let server = Arc::new(Server::http("127.0.0.1:0").expect("bind test server"));
        let (tx, rx) = channel();
        let s = server.clone();
        let thread = std::thread::spawn(move || {
            for mut req in s.incoming_requests() {
                let mut body = Vec::new();
                let _ = req.as_reader().read_to_end(&mut body);
                let rec = Recorded {
                    method: req.method().to_string(),
                    url: req.url().to_string(),
                    headers: req
                        .headers()
                        .iter()
                        .map(|h| (h.field.to_string(), h.value.to_string()))
                        .collect(),
                    body,
                };
                let resp = handler(&rec);
                let _ = tx.send(rec);
                // The client may hang up on purpose (huge bodies): ignore write errors.
                let _ = req.respond(resp);
            }
        });
        Fake {
            server,
            rx,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        let port = self
            .server
            .server_addr()
            .to_ip()
            .expect("ip listener")
            .port();
        format!("http://127.0.0.1:{port}")
    }

    fn client(&self) -> Client {
        client_for(&self.url(), Duration::from_secs(5))
    }

    fn next(&self) -> Recorded {
        self.rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the server received no request")
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn client_for(url: &str, timeout: Duration) -> Client {
    Client::new(url, &Secret(KEY.into()), timeout, "0.1.0").expect("client")
}

fn json_reply(code: u16, body: &str) -> ResponseBox {
    Response::from_string(body)
        .with_status_code(StatusCode(code))
        .with_header(Header::from_bytes("Content-Type", "application/json; charset=utf-8").unwrap())
        .boxed()
}

fn assert_no_key(e: &Error) {
    let text = format!("{e} {e:?}");
    assert!(!text.contains(KEY), "error exposes the key: {text}");
}

/// §4.6: one remote client playing with a transcode (10.11).
const SESSION_4_6: &str = r#"{
  "PlayState": {
    "PositionTicks": 18234560000, "CanSeek": true, "IsPaused": false, "IsMuted": false,
    "VolumeLevel": 100, "AudioStreamIndex": 1, "SubtitleStreamIndex": -1,
    "MediaSourceId": "6f1c0a2b9d8e4f7a8b3c2d1e0f9a8b7c", "PlayMethod": "Transcode",
    "RepeatMode": "RepeatNone", "PlaybackOrder": "Default"
  },
  "AdditionalUsers": [],
  "Capabilities": {
    "PlayableMediaTypes": ["Audio", "Video"],
    "SupportedCommands": ["MoveUp", "ToggleOsd", "GoHome", "DisplayMessage", "SetRepeatMode", "PlayMediaSource"],
    "SupportsMediaControl": true,
    "SupportsPersistentIdentifier": false
  },
  "RemoteEndPoint": "203.0.113.45",
  "PlayableMediaTypes": ["Audio", "Video"],
  "Id": "a3f5c2e1b7d94c08e6f1a2b3c4d5e6f7",
  "UserId": "4b8e2f1a9c7d4e3fa1b2c3d4e5f60718",
  "UserName": "alice",
  "Client": "Jellyfin Web",
  "LastActivityDate": "2025-11-21T20:14:07.5123456Z",
  "LastPlaybackCheckIn": "2025-11-21T20:14:05.0012345Z",
  "DeviceName": "Firefox",
  "NowPlayingItem": {
    "Name": "The Long Night",
    "ServerId": "e2a9f0c4b1d84f6a9c3e7b5d1f2a4c68",
    "Id": "6f1c0a2b9d8e4f7a8b3c2d1e0f9a8b7c",
    "DateCreated": "2024-03-02T11:20:31.0000000Z",
    "Container": "mkv",
    "PremiereDate": "2019-04-28T00:00:00.0000000Z",
    "OfficialRating": "TV-MA",
    "CommunityRating": 6.9,
    "RunTimeTicks": 49234560000,
    "ProductionYear": 2019,
    "IndexNumber": 3,
    "ParentIndexNumber": 8,
    "IsFolder": false,
    "Type": "Episode",
    "SeriesName": "Example Series",
    "SeriesId": "0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f",
    "SeasonId": "1d2c3b4a5f6e7d8c9b0a1f2e3d4c5b6a",
    "SeasonName": "Season 8",
    "ImageTags": { "Primary": "8c0e3b5f2a1d4e6f9b7c0a2d4e6f8a1b" },
    "BackdropImageTags": [],
    "MediaStreams": [
      { "Codec": "hevc", "TimeBase": "1/1000", "VideoRange": "SDR", "VideoRangeType": "SDR",
        "AudioSpatialFormat": "None", "DisplayTitle": "1080p HEVC SDR", "IsInterlaced": false,
        "BitRate": 7814000, "BitDepth": 10, "RefFrames": 1, "IsDefault": true, "IsForced": false,
        "IsHearingImpaired": false, "Height": 1080, "Width": 1920, "AverageFrameRate": 23.976025,
        "RealFrameRate": 23.976025, "ReferenceFrameRate": 23.976025, "Profile": "Main 10",
        "Type": "Video", "AspectRatio": "16:9", "Index": 0, "IsExternal": false,
        "IsTextSubtitleStream": false, "SupportsExternalStream": false,
        "PixelFormat": "yuv420p10le", "Level": 120, "IsAnamorphic": false },
      { "Codec": "eac3", "Language": "eng", "TimeBase": "1/1000", "VideoRange": "Unknown",
        "VideoRangeType": "Unknown", "AudioSpatialFormat": "None",
        "DisplayTitle": "English - Dolby Digital+ - 5.1 - Default", "IsInterlaced": false,
        "ChannelLayout": "5.1", "BitRate": 640000, "Channels": 6, "SampleRate": 48000,
        "IsDefault": true, "IsForced": false, "IsHearingImpaired": false, "Type": "Audio",
        "Index": 1, "IsExternal": false, "IsTextSubtitleStream": false,
        "SupportsExternalStream": false, "Level": 0 }
    ],
    "VideoType": "VideoFile",
    "LocationType": "FileSystem",
    "MediaType": "Video",
    "Width": 1920,
    "Height": 1080
  },
  "DeviceId": "TW96aWxsYS81LjAgKFgxMTsgTGludXggeDg2XzY0KSAxNzMyMjE5MDQ1MTIz",
  "ApplicationVersion": "10.11.11",
  "TranscodingInfo": {
    "AudioCodec": "aac", "VideoCodec": "h264", "Container": "mp4",
    "IsVideoDirect": false, "IsAudioDirect": false, "Bitrate": 4192000,
    "Framerate": 96.4, "CompletionPercentage": 37.2, "Width": 1280, "Height": 720,
    "AudioChannels": 2, "HardwareAccelerationType": "vaapi",
    "TranscodeReasons": ["ContainerBitrateExceedsLimit"]
  },
  "IsActive": true,
  "SupportsMediaControl": true,
  "SupportsRemoteControl": true,
  "NowPlayingQueue": [],
  "NowPlayingQueueFullItems": [],
  "HasCustomDeviceName": false,
  "PlaylistItemId": "playlistItem0",
  "ServerId": "e2a9f0c4b1d84f6a9c3e7b5d1f2a4c68",
  "SupportedCommands": ["MoveUp", "ToggleOsd", "GoHome", "DisplayMessage", "SetRepeatMode", "PlayMediaSource"]
}"#;

/// A web UI open on the LAN, nothing playing.
const SESSION_IDLE: &str = r#"{
  "PlayState": {"CanSeek": false, "IsPaused": false, "IsMuted": false, "RepeatMode": "RepeatNone",
                "PlaybackOrder": "Default"},
  "AdditionalUsers": [], "Capabilities": {"PlayableMediaTypes": [], "SupportedCommands": [],
  "SupportsMediaControl": false, "SupportsPersistentIdentifier": true},
  "RemoteEndPoint": "192.168.1.20", "PlayableMediaTypes": [],
  "Id": "0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e", "UserId": "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d",
  "UserName": "bob", "Client": "Jellyfin Android", "DeviceName": "Pixel",
  "DeviceId": "android-1", "ApplicationVersion": "2.6.1", "IsActive": true,
  "SupportsMediaControl": false, "SupportsRemoteControl": false, "NowPlayingQueue": [],
  "HasCustomDeviceName": false, "ServerId": "e2a9f0c4b1d84f6a9c3e7b5d1f2a4c68",
  "SupportedCommands": []
}"#;

/// The daemon's own API-key session (§7.4): no user, no item.
const SESSION_API_KEY: &str = r#"{
  "PlayState": {"CanSeek": false, "IsPaused": false, "IsMuted": false},
  "RemoteEndPoint": "192.168.1.1", "Id": "ffeeddccbbaa99887766554433221100",
  "UserId": "00000000000000000000000000000000", "Client": "jellydemon",
  "DeviceName": "OpenWrt", "DeviceId": "jellydemon-router", "ApplicationVersion": "0.1.0",
  "IsActive": true, "SupportsMediaControl": false, "SupportsRemoteControl": false,
  "SupportedCommands": [], "ServerId": "e2a9f0c4b1d84f6a9c3e7b5d1f2a4c68"
}"#;

/// 10.8: `SessionInfo` with the leaked `FullNowPlayingItem`, an IPv4-mapped address, a movie
/// played directly, and a client without remote control.
const SESSION_10_8: &str = r#"{
  "PlayState": {"PositionTicks": 600000000, "CanSeek": true, "IsPaused": true,
                "MediaSourceId": "11112222333344445555666677778888", "PlayMethod": "DirectPlay",
                "AudioStreamIndex": 2},
  "RemoteEndPoint": "::ffff:198.51.100.7", "Id": "1234abcd1234abcd1234abcd1234abcd",
  "UserId": "5555aaaa5555aaaa5555aaaa5555aaaa", "UserName": "carol", "Client": "Kodi",
  "DeviceName": "LivingRoom", "DeviceId": "kodi-1",
  "NowPlayingItem": {"Name": "Heat", "Id": "11112222333344445555666677778888", "Type": "Movie",
    "RunTimeTicks": 102000000000,
    "MediaStreams": [{"Type": "Video", "Index": 0, "BitRate": 12000000, "IsDefault": true},
                     {"Type": "Audio", "Index": 1, "BitRate": 1536000, "IsDefault": true},
                     {"Type": "Audio", "Index": 2, "BitRate": 256000}]},
  "FullNowPlayingItem": {"Size": 15300000000, "Container": "mkv", "IsHD": true,
    "ExtraIds": [], "DateLastSaved": "2023-01-01T00:00:00.0000000Z", "RemoteTrailers": [],
    "SupportsExternalTransfer": false, "Path": "/media/movies/Heat (1995)/Heat.mkv"},
  "SupportsMediaControl": false, "SupportsRemoteControl": false,
  "SupportedCommands": ["DisplayMessage"]
}"#;

/// 12.0: no `NowPlayingQueueFullItems`, an IPv6 viewer.
const SESSION_12_0: &str = r#"{
  "PlayState": {"PositionTicks": 10000000, "IsPaused": false, "PlayMethod": "DirectStream",
                "MediaSourceId": "abcdefabcdefabcdefabcdefabcdefab"},
  "RemoteEndPoint": "2001:db8::42", "Id": "99990000999900009999000099990000",
  "UserId": "7777bbbb7777bbbb7777bbbb7777bbbb", "UserName": "dave", "Client": "Swiftfin",
  "DeviceName": "iPad", "DeviceId": "ipad-1",
  "NowPlayingItem": {"Name": "Song", "Id": "abcdefabcdefabcdefabcdefabcdefab", "Type": "Audio"},
  "TranscodingInfo": {"IsVideoDirect": true, "IsAudioDirect": true, "Bitrate": 320000,
                      "TranscodeReasons": []},
  "SupportsMediaControl": true, "SupportsRemoteControl": true, "NowPlayingQueue": [],
  "SupportedCommands": ["Play"]
}"#;

#[test]
fn sessions_of_every_version_parse_and_the_auth_header_is_the_only_credential() {
    let body =
        format!("[{SESSION_4_6},{SESSION_IDLE},{SESSION_API_KEY},{SESSION_10_8},{SESSION_12_0}]");
    let fake = Fake::new(move |_| json_reply(200, &body));
    let sessions = fake.client().sessions().expect("sessions");
    let req = fake.next();
    assert_eq!(req.method, "GET");
    assert_eq!(req.url, "/Sessions");
    let auth = req.header("Authorization").expect("Authorization header");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    assert_eq!(
        auth,
        format!(
            "MediaBrowser Client=\"jellydemon\", Device=\"OpenWrt\", DeviceId=\"jellydemon-{host}\", \
             Version=\"0.1.0\", Token=\"{KEY}\""
        )
    );
    for legacy in [
        "X-Emby-Token",
        "X-Emby-Authorization",
        "X-MediaBrowser-Token",
    ] {
        assert!(req.header(legacy).is_none(), "{legacy} sent");
    }
    assert!(
        !req.url.to_ascii_lowercase().contains("api"),
        "key in the URL"
    );

    assert_eq!(sessions.len(), 5);
    let playing: Vec<_> = sessions.iter().filter(|s| s.is_playing()).collect();
    assert_eq!(playing.len(), 3);

    let s = &sessions[0];
    assert_eq!(s.id, "a3f5c2e1b7d94c08e6f1a2b3c4d5e6f7");
    assert_eq!(
        s.user_id.as_deref(),
        Some("4b8e2f1a9c7d4e3fa1b2c3d4e5f60718")
    );
    assert_eq!(s.user_name.as_deref(), Some("alice"));
    assert_eq!(s.client.as_deref(), Some("Jellyfin Web"));
    assert_eq!(s.device_name.as_deref(), Some("Firefox"));
    assert_eq!(s.remote_ip, Some("203.0.113.45".parse::<IpAddr>().unwrap()));
    assert_eq!(s.title(), "episode: Example Series S08E03 The Long Night");
    assert_eq!(s.source_bitrate(), Some(7_814_000 + 640_000));
    assert_eq!(s.estimated_bitrate(), Some(4_192_000));
    let t = s.transcoding.as_ref().expect("transcoding");
    assert!(!t.is_video_direct && !t.is_audio_direct);
    assert_eq!(s.play_state.play_method.as_deref(), Some("Transcode"));
    assert_eq!(s.play_state.position_ticks, Some(18_234_560_000));
    assert_eq!(s.play_state.subtitle_stream_index, Some(-1));
    assert!(s.supports_remote_control && s.can_message());
    let np = s.now_playing.as_ref().unwrap();
    assert_eq!(np.run_time_ticks, Some(49_234_560_000));
    let r = s.resume_request().expect("resume request");
    assert_eq!(
        r.query(),
        "playCommand=PlayNow&itemIds=6f1c0a2b9d8e4f7a8b3c2d1e0f9a8b7c&startPositionTicks=18234560000\
         &mediaSourceId=6f1c0a2b9d8e4f7a8b3c2d1e0f9a8b7c&audioStreamIndex=1&subtitleStreamIndex=-1"
    );

    let idle = &sessions[1];
    assert!(!idle.is_playing());
    assert_eq!(
        idle.remote_ip,
        Some("192.168.1.20".parse::<IpAddr>().unwrap())
    );
    assert!(idle.resume_request().is_none());

    let own = &sessions[2];
    assert_eq!(own.user_id, None, "the all-zero GUID is no user");
    assert!(!own.is_playing());

    let old = &sessions[3];
    assert_eq!(
        old.remote_ip,
        Some("198.51.100.7".parse::<IpAddr>().unwrap())
    );
    assert_eq!(old.title(), "movie: Heat");
    assert_eq!(
        old.source_bitrate(),
        Some(12_000_000 + 256_000),
        "audio index 2"
    );
    assert!(old.play_state.is_paused);
    assert!(!old.can_message(), "no remote control");

    let new = &sessions[4];
    assert_eq!(
        new.remote_ip,
        Some("2001:db8::42".parse::<IpAddr>().unwrap())
    );
    assert_eq!(new.title(), "audio: Song");
    assert_eq!(new.estimated_bitrate(), Some(320_000));
    assert!(!new.can_message());
}

#[test]
fn system_info_and_camel_case_startup_info() {
    let fake = Fake::new(|r| {
        if r.url == "/System/Info/Public" {
            json_reply(
                200,
                r#"{"localAddress":"http://10.0.0.2:8096","serverName":"nas","version":"10.11.11",
                   "productName":"Jellyfin Server","operatingSystem":"","id":"e2a9f0c4b1d84f6a9c3e7b5d1f2a4c68",
                   "startupWizardCompleted":false}"#,
            )
        } else {
            json_reply(
                200,
                r#"{"ServerName":"nas","Version":"10.8.13","Id":"e2a9f0c4b1d84f6a9c3e7b5d1f2a4c68",
                   "HasPendingRestart":false,"CompletedInstallations":[]}"#,
            )
        }
    });
    let mut c = fake.client();
    let info = c.system_info().expect("system info");
    assert_eq!(fake.next().url, "/System/Info");
    assert_eq!(info.version.as_deref(), Some("10.8.13"));
    assert_eq!(info.server_name.as_deref(), Some("nas"));
    let public = c.public_info().expect("public info");
    assert_eq!(fake.next().url, "/System/Info/Public");
    assert_eq!(public.version.as_deref(), Some("10.11.11"));
    assert_eq!(public.server_name.as_deref(), Some("nas"));
    assert_eq!(
        public.id.as_deref(),
        Some("e2a9f0c4b1d84f6a9c3e7b5d1f2a4c68")
    );
}

#[test]
fn status_codes_decide_whatever_the_body() {
    let fake = Fake::new(|r| match r.url.as_str() {
        "/System/Info" => Response::from_string("<html><body>Jellyfin is starting</body></html>")
            .with_status_code(StatusCode(503))
            .with_header(Header::from_bytes("Retry-After", "005").unwrap())
            .with_header(Header::from_bytes("Content-Type", "text/html").unwrap())
            .boxed(),
        "/Sessions" => Response::empty(StatusCode(401)).boxed(),
        "/Users" => json_reply(403, r#""The key lacks rights""#),
        "/Sessions/nope/Playing/Stop" => Response::from_string("Error processing request.")
            .with_status_code(StatusCode(404))
            .boxed(),
        "/Sessions/x/Message" => json_reply(
            400,
            &format!(
                r#"{{"type":"https://tools.ietf.org/html/rfc9110#section-15.5.1","title":"One or more validation errors occurred.","status":400,"errors":{{"Text":["{KEY}"]}},"traceId":"00-1"}}"#
            ),
        ),
        _ => Response::from_string(format!("boom {KEY}"))
            .with_status_code(StatusCode(500))
            .boxed(),
    });
    let mut c = fake.client();
    let e = c.system_info().unwrap_err();
    assert_eq!(
        e,
        Error::Starting {
            retry_after: Some(Duration::from_secs(5))
        }
    );
    assert!(e.is_transient());
    let e = c.sessions().unwrap_err();
    assert_eq!(e, Error::Unauthorized);
    assert!(!e.is_transient());
    assert!(e.to_string().contains("api_key"), "{e}");
    assert_eq!(c.users().unwrap_err(), Error::Forbidden);
    assert_eq!(c.stop("nope").unwrap_err(), Error::NotFound);
    let e = c.message("x", "h", "t", 1000).unwrap_err();
    assert_eq!(e, Error::Status(400));
    assert_no_key(&e);
    let e = c.user("u").unwrap_err();
    assert_eq!(e, Error::Status(500));
    assert!(e.is_transient());
    assert_no_key(&e);
}

#[test]
fn garbage_and_truncated_json_are_malformed() {
    let fake = Fake::new(|r| match r.url.as_str() {
        "/Sessions" => json_reply(200, &format!("<html>{KEY}</html>")),
        "/Users" => json_reply(200, r#"[{"Id":"u1","Name":"alice","Policy":{"IsAdmin"#),
        "/System/Info" => json_reply(200, r#"["not","an","object"]"#),
        _ => json_reply(200, r#"{"Id":"u1"} trailing"#),
    });
    let mut c = fake.client();
    for e in [
        c.sessions().unwrap_err(),
        c.users().unwrap_err(),
        c.system_info().unwrap_err(),
        c.user("u1").unwrap_err(),
    ] {
        assert!(matches!(e, Error::Malformed(_)), "{e:?}");
        assert!(!e.is_transient());
        assert_no_key(&e);
    }
    let e = c.users().unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
}

/// A 100 MB answer is refused without reading it, announced or chunked.
#[test]
fn huge_bodies_are_refused_fast() {
    const HUNDRED_MB: usize = 100 * 1024 * 1024;
    let fake = Fake::new(|r| {
        let zeros = std::io::repeat(b' ').take(HUNDRED_MB as u64);
        let length = if r.url == "/Sessions" {
            Some(HUNDRED_MB)
        } else {
            None
        };
        Response::new(StatusCode(200), vec![], zeros, length, None)
            .with_chunked_threshold(usize::MAX)
            .boxed()
    });
    let mut c = fake.client();
    let t = Instant::now();
    assert_eq!(c.sessions().unwrap_err(), Error::TooLarge);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // Without a length the client stops at its limit (1 MiB here), far before 100 MB.
    let t = Instant::now();
    assert_eq!(c.users().unwrap_err(), Error::TooLarge);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

/// A server that accepts the connection and never answers: the call ends at the timeout.
#[test]
fn silent_server_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut c = client_for(&url, Duration::from_millis(400));
    let t = Instant::now();
    let e = c.sessions().unwrap_err();
    let took = t.elapsed();
    assert_eq!(e, Error::Timeout);
    assert!(e.is_transient());
    assert!(took >= Duration::from_millis(350), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    drop(listener);
}

#[test]
fn refused_connection_is_unreachable() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut c = client_for(&format!("http://127.0.0.1:{port}"), Duration::from_secs(2));
    let e = c.system_info().unwrap_err();
    assert!(matches!(e, Error::Unreachable(_)), "{e:?}");
    assert!(e.is_transient());
    assert_no_key(&e);
}

#[test]
fn https_is_refused_with_a_hint() {
    let e = Client::new(
        "https://jf.example:8920",
        &Secret(KEY.into()),
        Duration::from_secs(1),
        "0.1.0",
    )
    .unwrap_err();
    assert!(matches!(e, Error::BadUrl(_)));
    let text = e.to_string();
    assert!(text.contains("TLS") && text.contains("http://"), "{text}");
    assert_no_key(&e);
}

const USER_JSON: &str = r#"{
  "Name": "alice", "ServerId": "e2a9f0c4b1d84f6a9c3e7b5d1f2a4c68",
  "Id": "4b8e2f1a9c7d4e3fa1b2c3d4e5f60718", "HasPassword": true,
  "Configuration": {"PlayDefaultAudioTrack": true},
  "Policy": {
    "IsAdministrator": false, "IsHidden": true, "IsDisabled": false,
    "EnableCollectionManagement": false, "EnableSubtitleManagement": false,
    "EnableLyricManagement": false, "BlockedTags": [], "AllowedTags": [],
    "EnableUserPreferenceAccess": true, "AccessSchedules": [], "BlockUnratedItems": [],
    "EnableRemoteControlOfOtherUsers": false, "EnableSharedDeviceControl": true,
    "EnableRemoteAccess": true, "EnableLiveTvManagement": true, "EnableLiveTvAccess": true,
    "EnableMediaPlayback": true, "EnableAudioPlaybackTranscoding": true,
    "EnableVideoPlaybackTranscoding": true, "EnablePlaybackRemuxing": true,
    "ForceRemoteSourceTranscoding": false, "EnableContentDeletion": false,
    "EnableContentDeletionFromFolders": [], "EnableContentDownloading": true,
    "EnableSyncTranscoding": true, "EnableMediaConversion": true, "EnabledDevices": [],
    "EnableAllDevices": true, "EnabledChannels": [], "EnableAllChannels": true,
    "EnabledFolders": [], "EnableAllFolders": true, "InvalidLoginAttemptCount": 0,
    "LoginAttemptsBeforeLockout": -1, "MaxActiveSessions": 0, "EnablePublicSharing": true,
    "BlockedMediaFolders": [], "BlockedChannels": [], "RemoteClientBitrateLimit": 8000000,
    "MaxParentalRating": 13,
    "AuthenticationProviderId": "Custom.Ldap.Provider",
    "PasswordResetProviderId": "Jellyfin.Server.Implementations.Users.DefaultPasswordResetProvider",
    "SyncPlayAccess": "CreateAndJoinGroups"
  }
}"#;

#[test]
fn policy_update_is_the_same_policy_with_only_the_limit_changed() {
    let fake = Fake::new(|r| match (r.method.as_str(), r.url.as_str()) {
        ("GET", "/Users/4b8e2f1a9c7d4e3fa1b2c3d4e5f60718") => json_reply(200, USER_JSON),
        ("GET", "/Users") => json_reply(200, &format!("[{USER_JSON}]")),
        ("POST", "/Users/4b8e2f1a9c7d4e3fa1b2c3d4e5f60718/Policy") => {
            Response::empty(StatusCode(204)).boxed()
        }
        _ => Response::empty(StatusCode(404)).boxed(),
    });
    let mut c = fake.client();
    let user = c.user("4b8e2f1a9c7d4e3fa1b2c3d4e5f60718").expect("user");
    fake.next();
    assert_eq!(user.name, "alice");
    assert_eq!(user.remote_limit, 8_000_000);
    let users = c.users().expect("users");
    fake.next();
    assert_eq!(users, vec![user.clone()]);

    let policy = user.policy_with_limit(3_500_000);
    c.set_policy(&user.id, &policy).expect("policy update");
    let post = fake.next();
    assert_eq!(post.method, "POST");
    assert!(post
        .header("Content-Type")
        .is_some_and(|v| v.starts_with("application/json")));
    let sent: Map<String, Value> = serde_json::from_slice(&post.body).expect("JSON body");
    let original: Value = serde_json::from_str(USER_JSON).unwrap();
    let mut expected = original["Policy"].as_object().unwrap().clone();
    expected.insert("RemoteClientBitrateLimit".into(), json!(3_500_000));
    assert_eq!(sent, expected);
    assert_eq!(sent["AuthenticationProviderId"], "Custom.Ldap.Provider");

    // A policy that was not read from the server would wipe the user's settings: refused
    // before anything is sent.
    let mut bare = Map::new();
    bare.insert("RemoteClientBitrateLimit".into(), json!(1));
    let e = c.set_policy(&user.id, &bare).unwrap_err();
    assert!(matches!(e, Error::Malformed(_)), "{e:?}");
    assert!(fake.rx.recv_timeout(Duration::from_millis(200)).is_err());

    assert_eq!(
        c.set_policy("0000", &policy).unwrap_err(),
        Error::NotFound,
        "unknown user"
    );
}

#[test]
fn restart_commands_send_the_documented_requests() {
    let fake = Fake::new(|_| Response::empty(StatusCode(204)).boxed());
    let mut c = fake.client();
    let sid = "a3f5c2e1b7d94c08e6f1a2b3c4d5e6f7";
    c.message(
        sid,
        "Quality change",
        "Your stream restarts in a moment",
        5000,
    )
    .expect("message");
    let m = fake.next();
    assert_eq!(
        (m.method.as_str(), m.url.as_str()),
        ("POST", "/Sessions/a3f5c2e1b7d94c08e6f1a2b3c4d5e6f7/Message")
    );
    let body: Value = serde_json::from_slice(&m.body).unwrap();
    assert_eq!(
        body,
        json!({"Header": "Quality change", "Text": "Your stream restarts in a moment", "TimeoutMs": 5000})
    );

    c.stop(sid).expect("stop");
    let s = fake.next();
    assert_eq!(s.method, "POST");
    assert_eq!(s.url, format!("/Sessions/{sid}/Playing/Stop"));

    let req = PlayRequest {
        item_id: "6f1c0a2b9d8e4f7a8b3c2d1e0f9a8b7c".into(),
        start_position_ticks: Some(18_234_560_000),
        media_source_id: Some("6f1c0a2b9d8e4f7a8b3c2d1e0f9a8b7c".into()),
        audio_stream_index: Some(1),
        subtitle_stream_index: Some(-1),
    };
    c.play_now(sid, &req).expect("play now");
    let p = fake.next();
    assert_eq!(p.method, "POST");
    assert_eq!(
        p.url,
        format!(
            "/Sessions/{sid}/Playing?playCommand=PlayNow&itemIds=6f1c0a2b9d8e4f7a8b3c2d1e0f9a8b7c\
             &startPositionTicks=18234560000&mediaSourceId=6f1c0a2b9d8e4f7a8b3c2d1e0f9a8b7c\
             &audioStreamIndex=1&subtitleStreamIndex=-1"
        )
    );
    assert!(p.body.is_empty());
}

#[test]
fn item_bitrate_reads_the_chosen_media_source() {
    let fake = Fake::new(|_| {
        json_reply(
            200,
            r#"{"Name":"Heat","Id":"item1","MediaSources":[
                {"Id":"src-a","Bitrate":13536000,"Container":"mkv"},
                {"Id":"src-b","Bitrate":4000000}]}"#,
        )
    });
    let mut c = fake.client();
    assert_eq!(
        c.item_bitrate("u1", "item1", Some("src-b")).unwrap(),
        Some(4_000_000)
    );
    assert_eq!(fake.next().url, "/Users/u1/Items/item1");
    assert_eq!(
        c.item_bitrate("u1", "item1", None).unwrap(),
        Some(13_536_000)
    );
    assert_eq!(c.item_bitrate("u1", "item1", Some("other")).unwrap(), None);
}

/// Headers arrive, then the body trickles and stalls: the whole call is still bounded.
#[test]
fn stalled_body_times_out() {
    use std::io::Write;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (hold_tx, hold_rx) = channel::<()>();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 4096];
        let _ = conn.read(&mut buf);
        let _ = conn.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n[{\"Id\":",
        );
        let _ = conn.flush();
        // Keep the connection open, silent, until the test is done.
        let _ = hold_rx.recv();
    });
    let mut c = client_for(&url, Duration::from_millis(500));
    let t = Instant::now();
    let e = c.sessions().unwrap_err();
    let took = t.elapsed();
    drop(hold_tx);
    let _ = server.join();
    assert_eq!(e, Error::Timeout);
    assert!(took < Duration::from_secs(3), "{took:?}");
}

/// The announced length alone is enough to refuse: the server sends no body at all and the
/// answer is still TooLarge at once, not a timeout.
#[test]
fn announced_length_is_refused_unread() {
    use std::io::Write;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (hold_tx, hold_rx) = channel::<()>();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 4096];
        let _ = conn.read(&mut buf);
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 104857600\r\n\r\n");
        let _ = conn.flush();
        let _ = hold_rx.recv();
    });
    let mut c = client_for(&url, Duration::from_secs(5));
    let t = Instant::now();
    let e = c.sessions().unwrap_err();
    let took = t.elapsed();
    drop(hold_tx);
    let _ = server.join();
    assert_eq!(e, Error::TooLarge);
    assert!(took < Duration::from_secs(2), "{took:?}");
}

/// The shutdown shortens the timeout of the running client (keeping the address it looked up,
/// see src/http.rs): later calls end at the new timeout, not at the configured one.
#[test]
fn a_shortened_timeout_applies_to_later_calls() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut c = client_for(&format!("http://localhost:{port}"), Duration::from_secs(30));
    // A silent server: each call lasts exactly as long as its timeout allows.
    c.set_timeout(Duration::from_millis(300));
    let t = Instant::now();
    assert_eq!(c.sessions().unwrap_err(), Error::Timeout);
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    c.set_timeout(Duration::from_millis(200));
    let t = Instant::now();
    assert_eq!(c.users().unwrap_err(), Error::Timeout);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    drop(listener);
}
