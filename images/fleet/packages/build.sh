#!/bin/sh
# Build the fleet's packages (two versions of each) into DEST and index them as an apt repository.
#   fleet-base: on every host; 1.1 asks for a reboot (/var/run/reboot-required), as libc or a kernel would
#   fleet-web:  the page the web hosts serve, which names its version
set -eu
dest="$1"
mkdir -p "$dest"
build() {  # name version description
  root="$(mktemp -d)"
  mkdir -p "$root/DEBIAN" "$root/usr/share/fleet"
  cat >"$root/DEBIAN/control" <<CONTROL
Package: $1
Version: $2
Architecture: all
Maintainer: opshub practice fleet <fleet@localhost>
Description: $3
CONTROL
  echo "$1 $2" >"$root/usr/share/fleet/$1.version"
  case "$1" in
    fleet-web)
      mkdir -p "$root/var/www/html"
      echo "<!doctype html><title>fleet</title><p>fleet-web $2</p>" >"$root/var/www/html/index.html"
      ;;
    fleet-base)
      if [ "$2" != 1.0 ]; then
        printf '#!/bin/sh\ntouch /var/run/reboot-required\necho "*** System restart required ***"\n' >"$root/DEBIAN/postinst"
        chmod 0755 "$root/DEBIAN/postinst"
      fi
      ;;
  esac
  dpkg-deb --root-owner-group --build "$root" "$dest/${1}_${2}_all.deb" >/dev/null
  rm -rf "$root"
}
build fleet-base 1.0 "Practice fleet base system"
build fleet-base 1.1 "Practice fleet base system (security update: needs a reboot)"
build fleet-web 1.0 "Practice fleet web content"
build fleet-web 1.1 "Practice fleet web content (update)"
cd "$dest"
apt-ftparchive packages . >Packages
gzip -9kf Packages
apt-ftparchive release . >Release
