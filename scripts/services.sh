#!/usr/bin/env bash
# Install (when missing) and start the services the tests need, on loopback only: PostgreSQL with a cadx role and
# a cadx_test database, Debian's Chromium for the browser tests, dicom3tools (dciodvfy) for the DICOM export, and
# an Orthanc PACS with its DICOMweb plugin (http://127.0.0.1:8042/dicom-web/, basic auth cadx/cadx, and cadx-reader
# with a password no other text holds, so tests can prove it never reaches output or database) for the DICOMweb
# tests. Needs root on Debian.
set -euo pipefail
need=()
command -v pg_ctlcluster >/dev/null || need+=(postgresql)
[ -x /usr/bin/chromium ] || need+=(chromium chromium-driver)
command -v Orthanc >/dev/null || need+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
if [ ${#need[@]} -gt 0 ]; then
  echo "cadx: installing ${need[*]}" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# dciodvfy (Debian dicom3tools) checks the exported SR and SEG files (tests/test_export_dicom.py); optional: where
# the package does not exist the test skips that check (under CI=true it fails, so CI must have it).
if ! command -v dciodvfy >/dev/null; then
  if apt-cache show dicom3tools >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-cache show dicom3tools >/dev/null 2>&1; }; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools >/dev/null || echo "cadx: dicom3tools did not install" >&2
  else
    echo "cadx: no dicom3tools package here; the DICOM export test skips its dciodvfy check" >&2
  fi
fi
version=$(ls /usr/lib/postgresql | sort -V | tail -1)
if ! pg_lsclusters -h | grep -q "^$version main"; then
  pg_createcluster "$version" main >/dev/null
fi
# Listen on loopback only.
sed -i "s/^#\?listen_addresses.*/listen_addresses = '127.0.0.1'/" "/etc/postgresql/$version/main/postgresql.conf"
pg_ctlcluster "$version" main start >/dev/null 2>&1 || true  # already running is fine
for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 && break; sleep 1; done
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='cadx'\"" | grep -q 1 \
  || su postgres -c "psql -qc \"CREATE ROLE cadx LOGIN CREATEDB PASSWORD 'cadx'\""
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname='cadx_test'\"" | grep -q 1 \
  || su postgres -c "createdb -O cadx cadx_test"

# Orthanc: started here as a plain background process (no init system is assumed), with its own configuration and
# storage. HTTP on loopback only, no DICOM (DIMSE) listener at all, basic auth on. Kept when it
# already answers, so running this script twice changes nothing.
orthanc_port=${CADX_TEST_ORTHANC_PORT:-8042}
orthanc_dir=/var/lib/cadx-orthanc
orthanc_reader_password=Rdr-7Qx2-Vb9K-pacs
orthanc_answers() {  # answering with this script's current users (an Orthanc with an older configuration does not)
  python3 - "$orthanc_port" "cadx-reader:$orthanc_reader_password" <<'PY'
import base64, sys, urllib.request
request = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/system",
                                 headers={"Authorization": "Basic " + base64.b64encode(sys.argv[2].encode()).decode()})
try:
    sys.exit(0 if urllib.request.urlopen(request, timeout=2).status == 200 else 1)
except Exception:
    sys.exit(1)
PY
}
if ! orthanc_answers; then
  if [ -s "$orthanc_dir/orthanc.pid" ] && kill -0 "$(cat "$orthanc_dir/orthanc.pid")" 2>/dev/null; then
    kill "$(cat "$orthanc_dir/orthanc.pid")"  # ours, started with an older configuration: restart it
    for _ in $(seq 30); do kill -0 "$(cat "$orthanc_dir/orthanc.pid")" 2>/dev/null || break; sleep 1; done
  fi
  mkdir -p "$orthanc_dir/db"
  cat >"$orthanc_dir/orthanc.json" <<JSON
{
  "Name": "cadx-test",
  "StorageDirectory": "$orthanc_dir/db",
  "IndexDirectory": "$orthanc_dir/db",
  "HttpPort": $orthanc_port,
  "RemoteAccessAllowed": false,
  "AuthenticationEnabled": true,
  "RegisteredUsers": {"cadx": "cadx", "cadx-reader": "$orthanc_reader_password"},
  "DicomServerEnabled": false,
  "DicomPort": 4242,
  "WebDavEnabled": false,
  "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
  "DicomWeb": {"Enable": true, "Root": "/dicom-web/", "EnableWado": false, "Ssl": false, "StudiesMetadata": "Full",
               "SeriesMetadata": "Full"}
}
JSON
  # Orthanc 1.10 (Debian 12) cannot bind its HTTP socket to one address: RemoteAccessAllowed=false is what keeps it
  # loopback-only (every client other than 127.0.0.1 is refused before authentication).
  nohup Orthanc "$orthanc_dir/orthanc.json" >"$orthanc_dir/orthanc.log" 2>&1 </dev/null &
  echo $! >"$orthanc_dir/orthanc.pid"
  for _ in $(seq 30); do orthanc_answers && break; sleep 1; done
  orthanc_answers || { echo "cadx: Orthanc did not start; see $orthanc_dir/orthanc.log" >&2; exit 1; }
fi
