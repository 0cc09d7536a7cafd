// Every label, category and message of the screen, in Bahasa Indonesia (the default) and English.
export const TEXT = {
  id: {
    title: "Pusat Komando", username: "Nama pengguna", password: "Kata sandi", sign_in: "Masuk",
    sign_out: "Keluar", sound: "Suara", alerts: "Peringatan", air: "Udara", flood: "Banjir",
    traffic: "Lalu lintas", health: "Kesehatan sensor", live: "Langsung", reconnecting: "Menyambung ulang…",
    stale: "Data lama", age: "data terbaru {age} lalu", login_failed: "Nama pengguna atau kata sandi salah",
    throttled: "Terlalu banyak percobaan gagal: coba lagi nanti", acknowledge: "Tangani", resolve: "Selesaikan",
    silence: "Bisukan sensor", note: "Catatan", minutes: "Menit", cancel: "Batal", save: "Simpan",
    open: "Terbuka", acknowledged: "Ditangani", resolved: "Selesai", by: "oleh", opened: "dibuka",
    none: "Tidak ada peringatan aktif", info: "Info", warning: "Waspada", critical: "Kritis",
    station: "Stasiun", district: "Kecamatan", ispu: "ISPU", category: "Kategori",
    ispu_now: "ISPU sekarang", ispu_today: "ISPU hari ini", critical_pollutant: "Polutan kritis",
    gauge: "Pos duga air", level: "Tinggi muka air", siaga: "Status", rate: "Laju (cm/jam)", since: "Data terakhir",
    counter: "Penghitung", flow: "Arus (smp/jam)", speed: "Kecepatan (km/jam)", ds: "Derajat kejenuhan",
    los: "Tingkat pelayanan", sensor: "Sensor", kind: "Jenis", status: "Status", last_seen: "Terakhir terlihat",
    ok: "Normal", offline: "Mati", stuck: "Macet (nilai tetap)", rejected: "Data ditolak", trend: "Tren",
    h24: "24 jam", d7: "7 hari", d30: "30 hari", no_data: "Tidak ada data", upstream: "hulu → hilir",
    sign_in_as: "Masuk sebagai {name} ({role}) — {cities}", every_city: "semua kota",
    role_operator: "operator", role_agency: "dinas", role_engineer: "teknisi", role_admin: "admin",
    kind_air: "Udara", kind_flood: "Banjir", kind_traffic: "Lalu lintas", kind_rain: "Hujan",
    escalated: "meningkat", deescalated: "menurun", reopened: "dibuka lagi", flapping: "berubah-ubah",
    flapping_ended: "stabil", silenced: "dibisukan", note_required: "Tulis catatan (alasan)",
    rain_hour: "Hujan 1 jam", rain_day: "Hujan hari ini", seconds: "{n} dtk", minutes_ago: "{n} mnt", hours_ago: "{n} jam",
    shown_of: "{n} dari {total} ditampilkan, yang terburuk lebih dulu",
  },
  en: {
    title: "Command Centre", username: "User name", password: "Password", sign_in: "Sign in",
    sign_out: "Sign out", sound: "Sound", alerts: "Alerts", air: "Air", flood: "Flood",
    traffic: "Traffic", health: "Sensor health", live: "Live", reconnecting: "Reconnecting…",
    stale: "Stale", age: "newest data {age} ago", login_failed: "Wrong user name or password",
    throttled: "Too many failed attempts: try again later", acknowledge: "Acknowledge", resolve: "Resolve",
    silence: "Silence sensor", note: "Note", minutes: "Minutes", cancel: "Cancel", save: "Save",
    open: "Open", acknowledged: "Acknowledged", resolved: "Resolved", by: "by", opened: "opened",
    none: "No active alerts", info: "Info", warning: "Warning", critical: "Critical",
    station: "Station", district: "District", ispu: "ISPU", category: "Category",
    ispu_now: "ISPU now", ispu_today: "ISPU today", critical_pollutant: "Critical pollutant",
    gauge: "Gauge", level: "Water level", siaga: "Status", rate: "Rate (cm/h)", since: "Last data",
    counter: "Counter", flow: "Flow (pcu/h)", speed: "Speed (km/h)", ds: "Degree of saturation",
    los: "Level of service", sensor: "Sensor", kind: "Kind", status: "Status", last_seen: "Last seen",
    ok: "OK", offline: "Offline", stuck: "Stuck (constant value)", rejected: "Readings rejected", trend: "Trend",
    h24: "24 hours", d7: "7 days", d30: "30 days", no_data: "No data", upstream: "upstream → downstream",
    sign_in_as: "Signed in as {name} ({role}) — {cities}", every_city: "every city",
    role_operator: "operator", role_agency: "agency", role_engineer: "engineer", role_admin: "admin",
    kind_air: "Air", kind_flood: "Flood", kind_traffic: "Traffic", kind_rain: "Rain",
    escalated: "escalated", deescalated: "de-escalated", reopened: "reopened", flapping: "flapping",
    flapping_ended: "steady", silenced: "silenced", note_required: "Write a note (why)",
    rain_hour: "Rain, last hour", rain_day: "Rain today", seconds: "{n} s", minutes_ago: "{n} min", hours_ago: "{n} h",
    shown_of: "{n} of {total} shown, the worst first",
  },
};

// Category names the API gives in Indonesian (ISPU, Siaga, BMKG), with their English.
export const CATEGORY_EN = {
  "Baik": "Good", "Sedang": "Moderate", "Tidak Sehat": "Unhealthy", "Sangat Tidak Sehat": "Very unhealthy",
  "Berbahaya": "Hazardous", "Siaga 4 (Normal)": "Level 4 (Normal)", "Siaga 3 (Waspada)": "Level 3 (Caution)",
  "Siaga 2 (Siaga)": "Level 2 (Standby)", "Siaga 1 (Awas)": "Level 1 (Danger)",
  "none": "No rain", "ringan": "Light", "sedang": "Moderate", "lebat": "Heavy", "sangat_lebat": "Very heavy",
  "ekstrem": "Extreme",
};

// BMKG rain classes as the API names them, in Indonesian.
export const RAIN_ID = { none: "Tidak hujan", ringan: "Ringan", sedang: "Sedang", lebat: "Lebat",
  sangat_lebat: "Sangat lebat", ekstrem: "Ekstrem" };

export function t(lang, key, vars = {}) {
  const text = (TEXT[lang] && TEXT[lang][key]) || TEXT.id[key] || key;
  return text.replace(/\{(\w+)\}/g, (_, name) => String(vars[name] ?? ""));
}

export function category(lang, label) {
  if (lang === "en") return CATEGORY_EN[label] || label;
  return RAIN_ID[label] || label;
}
