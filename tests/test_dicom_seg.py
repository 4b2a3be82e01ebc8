"""DICOM SEG output: coded segments that reference the source series and land on its geometry when read
back with highdicom and with pydicom + SimpleITK."""
import datetime
import json

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("highdicom", reason="highdicom is in the [dicom] and [test] extras")
import highdicom as hd  # noqa: E402
import pydicom  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid  # noqa: E402

from autoseg.inference.dicom_seg import segment_codes, write_dicom_seg  # noqa: E402


def seg_on_source_grid(seg_path, source: sitk.Image, names: dict[str, int]) -> np.ndarray:
    """Paint every SEG frame into an array of the source's grid at the slice its plane position names."""
    seg = pydicom.dcmread(seg_path)
    value = {s.SegmentNumber: names[s.SegmentLabel] for s in seg.SegmentSequence}
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    out = np.zeros(sitk.GetArrayViewFromImage(source).shape, np.int16)
    for frame, fg in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        ipp = [float(v) for v in fg.PlanePositionSequence[0].ImagePositionPatient]
        x, y, z = source.TransformPhysicalPointToIndex(ipp)
        assert (x, y) == (0, 0) and np.allclose(source.TransformIndexToPhysicalPoint((0, 0, z)), ipp, atol=1e-3)
        out[z][frame > 0] = value[fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber]
    assert [float(v) for v in seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
            .ImageOrientationPatient] == list(source.GetDirection()[0:2]) + [0.0] + list(source.GetDirection()[3:5]) + [0.0]
    return out


def test_segment_codes_snomed():
    assert segment_codes("liver") == (("91723000", "Anatomical Structure"), ("10200004", "Liver"))
    assert segment_codes("kidney_left")[1][0] == "18639004" and segment_codes("Right Kidney")[1][0] == "9846003"
    assert segment_codes("liver_tumour") == (("49755003", "Morphologically Abnormal Structure"),
                                             ("108369006", "Neoplasm"))
    assert segment_codes("lung_upper_lobe_left")[1] == ("85756007", "Tissue")  # not in the table: generic


def test_totalseg_dicom_series_round_trip(totalseg, tmp_path):
    """Real JPEG2000 CT series with TotalSegmentator labels. The labels' NIfTI is y-flipped against the
    DICOM (same physical space): resample it physically onto the series first, never by index."""
    ct = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(totalseg / "example_ct_dicom")))
    seg_nii = sitk.ReadImage(str(totalseg / "example_seg_dicom.nii.gz"))
    on_ct = sitk.Resample(seg_nii, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, seg_nii.GetPixelID())
    labels = sitk.GetArrayFromImage(on_ct).astype(np.uint8)
    assert np.array_equal(labels[:, ::-1], sitk.GetArrayFromImage(seg_nii))  # the flip really is there
    classmap = json.loads((totalseg / "classmap_total_v2.json").read_text())
    keep = [v for v in np.unique(labels) if v and classmap[str(v)] in ("liver", "spleen", "stomach", "pancreas", "colon")]
    labels[~np.isin(labels, keep)] = 0  # five organs: highdicom's time grows with segments x slices
    names = {classmap[str(v)]: int(v) for v in keep}
    out = write_dicom_seg(labels, totalseg / "example_ct_dicom", names, tmp_path / "ct.seg.dcm")

    seg = hd.seg.segread(out)
    assert {d.SegmentLabel for d in seg.SegmentSequence} == set(names)
    liver = next(d for d in seg.SegmentSequence if d.SegmentLabel == "liver")
    assert liver.SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    first_src = pydicom.dcmread(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(totalseg / "example_ct_dicom"))[0],
                                stop_before_pixels=True)
    referenced = {r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence}
    assert first_src.file_meta.MediaStorageSOPInstanceUID in referenced
    assert np.array_equal(seg_on_source_grid(out, ct, names), labels)


def write_ct_series(folder, image: np.ndarray, spacing=(2.0, 1.5, 1.5), origin=(-20.0, -30.0, 100.0)) -> None:
    """A plain uncompressed CT series: one file per slice, slices along +z."""
    folder.mkdir(parents=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for z, plane in enumerate(image):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "CT", "P1", "Phantom^Test", "", "O"
        ds.StudyDate = ds.ContentDate = datetime.date.today().strftime("%Y%m%d")
        ds.StudyTime = ds.ContentTime = "120000"
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName, ds.Manufacturer = "1", "", "", "autoseg-test"
        ds.SeriesNumber, ds.InstanceNumber = 1, z + 1
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + z * spacing[0]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [spacing[1], spacing[2]], spacing[0]
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = plane.astype(np.int16).tobytes()
        ds.save_as(folder / f"slice{z:03d}.dcm", enforce_file_format=True)


def test_run_inference_writes_nifti_and_seg_for_a_dicom_series(tmp_path):
    from autoseg.inference.bundle import export_bundle
    from autoseg.inference.cli import run_inference
    from autoseg.inference.random_models import tiny_plans, write_random_checkpoints
    from autoseg.io import read_image

    write_random_checkpoints(tiny_plans(stages=("organ",)), tmp_path / "results")
    zpath = export_bundle(999, tmp_path / "model.zip", results=tmp_path / "results")
    rng = np.random.default_rng(0)
    image = np.full((8, 20, 24), -1000, np.int16)
    image[1:7, 2:18, 2:22] = rng.integers(-50, 300, (6, 16, 20))
    write_ct_series(tmp_path / "in" / "patient1", image)
    args = dict(model=str(zpath), device="cpu", num_threads=1, output_format="both")
    assert run_inference(str(tmp_path / "in"), str(tmp_path / "out"), None, **args) == 0
    mask = read_image(tmp_path / "out" / "patient1.nii.gz")[0]
    assert mask.any()
    source = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path / "in" / "patient1")))
    names = {"liver": 1, "kidney": 2, "tumour": 3}
    assert np.array_equal(seg_on_source_grid(tmp_path / "out" / "patient1.seg.dcm", source, names), mask)
    seg = hd.seg.segread(tmp_path / "out" / "patient1.seg.dcm")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == pydicom.dcmread(
        tmp_path / "in" / "patient1" / "slice000.dcm").SeriesInstanceUID
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["liver", "kidney", "tumour"]
