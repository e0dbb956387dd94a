"""The WSL side: runs inside WSL (or a container) next to the bot.

- `discover`: where Windows is (pure rules on the machine's facts), and whether the relay and TWS
  answer there.
- `envfile`: rewrite the bot's `.env` / YAML with the working host and port, atomically.
- `forward`: listen on 127.0.0.1 at TWS's own ports and splice to the Windows relay, so a bot that
  says `127.0.0.1:7497` runs unchanged (the same pump and listener as the Windows side).
"""
