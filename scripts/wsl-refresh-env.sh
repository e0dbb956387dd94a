# tws-relay: refresh the bot's .env at login, since the Windows host's address can change after a
# reboot. Put this in ~/.bashrc (or source it from there) and set BOT_ENV to your bot's .env file:
#
#   BOT_ENV="$HOME/IntradayTrading/ITS/.env"
#   . /path/to/tws-relay/scripts/wsl-refresh-env.sh
#
# It runs in the background, prints one line only when something changed or failed, and never
# writes a value it could not verify (see `relay wsl configure --help`).
if [ -n "${BOT_ENV:-}" ] && command -v relay >/dev/null 2>&1; then
  (
    out=$(relay wsl configure --env "$BOT_ENV" --timeout 2 2>&1)
    case "$out" in
      *"nothing changed"*) ;;
      *) printf 'tws-relay: %s\n' "$(printf '%s\n' "$out" | tail -n 1)" ;;
    esac
  ) &
fi
