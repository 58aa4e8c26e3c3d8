"""Write one ``wav.scp`` value (path, ``cmd |`` or ``x.ark:offset``) to stdout as a WAV file.

``python -m stok.data.prepare.wavcat SPEC [START END]``: lets lhotse (whose command sources read a
program's stdout) load Kaldi ark entries; the folder recipe writes such commands into its manifests.
The audio keeps its rate and channels; samples are written as 32-bit float.
"""

from __future__ import annotations

import io
import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (1, 3):
        print(__doc__, file=sys.stderr)
        return 2
    import soundfile

    from stok.data.audio import read_raw

    start = float(argv[1]) if len(argv) == 3 else None
    end = float(argv[2]) if len(argv) == 3 else None
    data, rate = read_raw(argv[0], start, end)
    buf = io.BytesIO()
    soundfile.write(buf, data, rate, format="WAV", subtype="FLOAT")
    sys.stdout.buffer.write(buf.getvalue())
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
