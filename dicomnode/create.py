"""Making DICOM objects in scripts: `from dicomnode.create import from_array, write`.

    import numpy as np
    from dicomnode.create import Context, from_array, write

    volume = np.load("ct.npy")                       # (slices, rows, cols), int16 HU
    obj = from_array(volume, Context(patient={"PatientName": "Doe^Jane", "PatientID": "123"}),
                     spacing=(2.5, 0.7, 0.7))
    with open("ct.dcm", "wb") as f:
        write(obj, f)

The functions are those of `dicomnode create` (node/media/create.py); `dicomnode import` (or
`dicomnode create --store`) puts the result into the archive.
"""

from dicomnode.node.media.create import (
    Context,
    CreateError,
    NewObject,
    from_array,
    from_images,
    from_pdf,
    from_video,
    write,
)

__all__ = ["Context", "CreateError", "NewObject", "from_array", "from_images", "from_pdf", "from_video", "write"]
