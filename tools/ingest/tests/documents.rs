//! PDF, DOCX, PPTX and image sources, made by the tests (lopdf writes the PDFs, zip the Office files).
#![allow(clippy::unwrap_used)]

use ftkit_testkit::Run;
use lopdf::content::{Content, Operation};
use lopdf::{Document, Object, Stream, dictionary};
use serde_json::Value;
use std::io::Write;
use std::path::Path;

const BIN: &str = env!("CARGO_BIN_EXE_ft-ingest");

fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x as u8).wrapping_mul(9), (y as u8).wrapping_mul(5), 80])
    });
    let mut out = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut out),
        image::ImageFormat::Jpeg,
    )
    .unwrap();
    out
}

/// A PDF whose pages hold these lines, top to bottom (Helvetica 12); `image` is drawn on page 1.
fn pdf(pages: &[Vec<String>], image: Option<&[u8]>) -> Vec<u8> {
    let mut doc = Document::with_version("1.5");
    let pages_id = doc.new_object_id();
    let font = doc.add_object(dictionary! {
        "Type" => "Font", "Subtype" => "Type1", "BaseFont" => "Helvetica",
    });
    let xobject = image.map(|bytes| {
        let dict = dictionary! {
            "Type" => "XObject", "Subtype" => "Image", "Width" => 30, "Height" => 20,
            "ColorSpace" => "DeviceRGB", "BitsPerComponent" => 8, "Filter" => "DCTDecode",
        };
        doc.add_object(Stream::new(dict, bytes.to_vec()))
    });
    let mut kids = Vec::new();
    for (i, lines) in pages.iter().enumerate() {
        let mut ops = vec![
            Operation::new("BT", vec![]),
            Operation::new("Tf", vec!["F1".into(), 12.into()]),
            Operation::new("Td", vec![72.into(), 740.into()]),
        ];
        for line in lines {
            ops.push(Operation::new(
                "Tj",
                vec![Object::string_literal(line.as_str())],
            ));
            ops.push(Operation::new("Td", vec![0.into(), (-16).into()]));
        }
        ops.push(Operation::new("ET", vec![]));
        let mut resources = dictionary! { "Font" => dictionary! { "F1" => font } };
        if let (0, Some(x)) = (i, xobject) {
            resources.set("XObject", dictionary! { "Im1" => x });
            ops.extend([
                Operation::new("q", vec![]),
                Operation::new(
                    "cm",
                    vec![
                        30.into(),
                        0.into(),
                        0.into(),
                        20.into(),
                        72.into(),
                        400.into(),
                    ],
                ),
                Operation::new("Do", vec!["Im1".into()]),
                Operation::new("Q", vec![]),
            ]);
        }
        let content = doc.add_object(Stream::new(
            dictionary! {},
            Content { operations: ops }.encode().unwrap(),
        ));
        kids.push(doc.add_object(dictionary! {
            "Type" => "Page", "Parent" => pages_id, "Contents" => content, "Resources" => resources,
            "MediaBox" => vec![0.into(), 0.into(), 612.into(), 792.into()],
        }).into());
    }
    doc.objects.insert(
        pages_id,
        Object::Dictionary(
            dictionary! { "Type" => "Pages", "Count" => kids.len() as i64, "Kids" => kids },
        ),
    );
    let catalog = doc.add_object(dictionary! { "Type" => "Catalog", "Pages" => pages_id });
    doc.trailer.set("Root", catalog);
    let mut out = Vec::new();
    doc.save_to(&mut out).unwrap();
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// An Office file: these parts, stored with deflate.
fn office(parts: &[(&str, &[u8])]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        for (name, bytes) in parts {
            zip.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
    }
    buf.into_inner()
}

fn report_pages() -> Vec<Vec<String>> {
    // Body lines differ in words, not only in digits (those would look like running headers).
    ["alpha", "beta", "gamma", "delta"]
        .iter()
        .enumerate()
        .map(|(i, word)| {
            let n = i + 1;
            vec![
                "Annual Report".to_string(),
                format!("The {word} section opens with an exam-"),
                format!("ple on the {word} page."),
                format!("Page {n}"),
            ]
        })
        .collect()
}

#[test]
fn a_pdf_is_one_document_with_its_pages_and_images() {
    let tmp = tempfile::tempdir().unwrap();
    let img = jpeg(30, 20);
    let file = write(tmp.path(), "report.pdf", &pdf(&report_pages(), Some(&img)));
    let assets = tmp.path().join("assets");
    let out = Run::new(BIN)
        .arg(&file)
        .arg("--extract-images")
        .arg(&assets)
        .run()
        .expect_code(0);
    let recs = out.records();
    assert_eq!(recs.len(), 2, "{}", out.stderr);
    let doc = &recs[0];
    let text = doc["text"].as_str().unwrap();
    // Header and page numbers (on every page) dropped, the hyphenated word joined.
    assert!(
        !text.contains("Annual Report") && !text.contains("Page 2"),
        "{text}"
    );
    assert!(
        text.starts_with("The alpha section opens with an example on the alpha page."),
        "{text}"
    );
    let pages: Vec<usize> = serde_json::from_value(doc["pages"].clone()).unwrap();
    assert_eq!(pages.len(), 4);
    assert_eq!(pages[0], 0);
    assert!(
        text[pages[2]..].starts_with("The gamma "),
        "{text:?} {pages:?}"
    );
    assert_eq!(
        doc["meta"],
        serde_json::json!({"format": "pdf", "page_count": 4})
    );
    let image = &recs[1];
    let sha = ftkit_core::id::sha256_hex(&img);
    assert_eq!(image["kind"], "image");
    assert_eq!(image["sha256"], Value::from(sha.clone()));
    assert_eq!(
        (
            image["page"].clone(),
            image["width"].clone(),
            image["height"].clone()
        ),
        (1.into(), 30.into(), 20.into())
    );
    let stored = assets.join(format!("{sha}.jpg"));
    assert_eq!(
        image["path"],
        Value::from(stored.to_string_lossy().as_ref())
    );
    assert_eq!(std::fs::read(&stored).unwrap(), img, "stored as embedded");
    let images_only = Run::new(BIN)
        .arg(&file)
        .arg("--extract-images")
        .arg(&assets)
        .arg("--images-only")
        .run()
        .expect_code(0);
    assert_eq!(images_only.records(), vec![image.clone()]);
}

#[test]
fn broken_encrypted_and_textless_pdfs_are_skipped_with_rejects() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("docs");
    std::fs::create_dir(&d).unwrap();
    let good = pdf(&report_pages(), None);
    write(&d, "a-good.pdf", &good);
    write(&d, "b-truncated.pdf", &good[..good.len() / 3]);
    write(&d, "c-garbage.pdf", b"%PDF-1.4\nthis is not a pdf at all");
    write(&d, "d-blank.pdf", &pdf(&[vec![], vec![]], None));
    std::fs::copy(
        ftkit_testkit::testdata("ingest", "encrypted.pdf"),
        d.join("e-encrypted.pdf"),
    )
    .unwrap();
    let rejects = tmp.path().join("rejects.jsonl");
    let out = Run::new(BIN)
        .arg(&d)
        .arg("--rejects")
        .arg(&rejects)
        .run()
        .expect_code(0);
    assert_eq!(out.records().len(), 1, "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    let rejected: Vec<Value> = std::fs::read_to_string(&rejects)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<(String, String)> = rejected
        .iter()
        .map(|r| {
            let src = r["source"].as_str().unwrap();
            (
                src.rsplit('/').next().unwrap().to_string(),
                r["skipped"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("b-truncated.pdf", "corrupt"),
            ("c-garbage.pdf", "corrupt"),
            ("d-blank.pdf", "no text layer"),
            ("e-encrypted.pdf", "encrypted"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string())),
        "{}",
        out.stderr
    );
}

const DOCX_BODY: &str = r#"<?xml version="1.0"?><w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>
<w:p><w:pPr><w:pStyle w:val="Title"/></w:pPr><w:r><w:t>Pump Manual</w:t></w:r></w:p>
<w:p><w:r><w:t>Check the seal &lt;weekly&gt;.</w:t></w:r></w:p>
<w:p><w:pPr><w:numPr><w:ilvl w:val="0"/></w:numPr></w:pPr><w:r><w:t>Open valve</w:t></w:r></w:p>
<w:tbl><w:tr><w:tc><w:p><w:r><w:t>Part</w:t></w:r></w:p></w:tc><w:tc><w:p><w:r><w:t>Life</w:t></w:r></w:p></w:tc></w:tr>
<w:tr><w:tc><w:p><w:r><w:t>Seal</w:t></w:r></w:p></w:tc><w:tc><w:p><w:r><w:t>2 years</w:t></w:r></w:p></w:tc></w:tr></w:tbl>
</w:body></w:document>"#;

#[test]
fn docx_and_pptx_become_markdown_with_slides_and_images() {
    let tmp = tempfile::tempdir().unwrap();
    let png = {
        let mut out = Vec::new();
        image::RgbImage::new(4, 3)
            .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    };
    let docx = office(&[
        ("word/document.xml", DOCX_BODY.as_bytes()),
        ("word/media/image1.png", &png),
    ]);
    write(tmp.path(), "manual.docx", &docx);
    let slide = |title: &str, body: &str| {
        format!(
            r#"<p:sld xmlns:p="p" xmlns:a="a"><p:cSld><p:spTree>
<p:sp><p:nvSpPr><p:nvPr><p:ph type="title"/></p:nvPr></p:nvSpPr><p:txBody><a:p><a:r><a:t>{title}</a:t></a:r></a:p></p:txBody></p:sp>
<p:sp><p:nvSpPr><p:nvPr><p:ph idx="1"/></p:nvPr></p:nvSpPr><p:txBody><a:p><a:r><a:t>{body}</a:t></a:r></a:p></p:txBody></p:sp>
</p:spTree></p:cSld></p:sld>"#
        )
    };
    let rel = |id: &str, kind: &str, target: &str| {
        format!(
            r#"<Relationship Id="{id}" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/{kind}" Target="{target}"/>"#
        )
    };
    let rels = |items: &[String]| format!("<Relationships>{}</Relationships>", items.concat());
    // Presentation order: slide2.xml first.
    let presentation = r#"<p:presentation xmlns:p="p" xmlns:r="r"><p:sldIdLst><p:sldId id="256" r:id="rId2"/><p:sldId id="257" r:id="rId1"/></p:sldIdLst></p:presentation>"#;
    let notes = r#"<p:notes xmlns:p="p" xmlns:a="a"><p:cSld><p:spTree>
<p:sp><p:nvSpPr><p:nvPr><p:ph type="sldImg"/></p:nvPr></p:nvSpPr></p:sp>
<p:sp><p:nvSpPr><p:nvPr><p:ph type="body" idx="1"/></p:nvPr></p:nvSpPr><p:txBody><a:p><a:r><a:t>Say it slowly.</a:t></a:r></a:p></p:txBody></p:sp>
<p:sp><p:nvSpPr><p:nvPr><p:ph type="sldNum"/></p:nvPr></p:nvSpPr><p:txBody><a:p><a:r><a:t>7</a:t></a:r></a:p></p:txBody></p:sp>
</p:spTree></p:cSld></p:notes>"#;
    let pptx = office(&[
        ("ppt/presentation.xml", presentation.as_bytes()),
        (
            "ppt/_rels/presentation.xml.rels",
            rels(&[
                rel("rId1", "slide", "slides/slide1.xml"),
                rel("rId2", "slide", "slides/slide2.xml"),
            ])
            .as_bytes(),
        ),
        (
            "ppt/slides/slide1.xml",
            slide("Second", "Results").as_bytes(),
        ),
        ("ppt/slides/slide2.xml", slide("First", "Agenda").as_bytes()),
        (
            "ppt/slides/_rels/slide1.xml.rels",
            rels(&[
                rel("rId1", "image", "../media/image1.png"),
                rel("rId2", "notesSlide", "../notesSlides/notesSlide1.xml"),
            ])
            .as_bytes(),
        ),
        ("ppt/notesSlides/notesSlide1.xml", notes.as_bytes()),
        ("ppt/media/image1.png", &png),
    ]);
    write(tmp.path(), "talk.pptx", &pptx);
    let assets = tmp.path().join("assets");
    let out = Run::new(BIN)
        .arg(tmp.path().join("manual.docx"))
        .arg(tmp.path().join("talk.pptx"))
        .arg("--extract-images")
        .arg(&assets)
        .run()
        .expect_code(0);
    let recs = out.records();
    assert_eq!(recs.len(), 4, "{}", out.stderr);
    assert_eq!(
        recs[0]["text"],
        "# Pump Manual\n\nCheck the seal <weekly>.\n\n- Open valve\n\n| Part | Life |\n| --- | --- |\n| Seal | 2 years |"
    );
    assert_eq!(recs[0]["meta"]["format"], "docx");
    assert_eq!(recs[1]["kind"], "image");
    assert_eq!(recs[1]["width"], 4);
    let talk = recs[2]["text"].as_str().unwrap();
    assert_eq!(
        talk,
        "# First\n\nAgenda\n\n# Second\n\nResults\n\nNotes: Say it slowly."
    );
    assert_eq!(recs[2]["slides"], serde_json::json!([0, 17]));
    assert_eq!(recs[3]["slide"], 2, "the image of the slide shown second");
}

#[test]
fn a_zip_bomb_disguised_as_docx_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let zeros = vec![b' '; 8 << 20];
    let bomb = office(&[("word/document.xml", &zeros)]);
    assert!(bomb.len() < 100_000);
    let file = write(tmp.path(), "bomb.docx", &bomb);
    let rejects = tmp.path().join("rejects.jsonl");
    let out = Run::new(BIN)
        .arg(&file)
        .args(["--max-file-size", "1M", "--rejects"])
        .arg(&rejects)
        .run()
        .expect_code(0);
    assert!(out.records().is_empty());
    assert!(out.stderr.contains("zip bomb"), "{}", out.stderr);
    assert!(
        std::fs::read_to_string(&rejects)
            .unwrap()
            .contains("\"corrupt\"")
    );
}

#[test]
fn standalone_images_give_records_only_when_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("pics");
    std::fs::create_dir(&d).unwrap();
    let img = jpeg(12, 7);
    write(&d, "a.jpg", &img);
    write(&d, "b.png", b"not really a png");
    let plain = Run::new(BIN).arg(&d).run().expect_code(0);
    assert!(plain.records().is_empty());
    assert!(
        plain.stderr.contains("image (see --extract-images)"),
        "{}",
        plain.stderr
    );
    let out = Run::new(BIN)
        .arg(&d)
        .arg("--extract-images")
        .arg(tmp.path().join("assets"))
        .run()
        .expect_code(0);
    let recs = out.records();
    assert_eq!(recs.len(), 1, "{}", out.stderr);
    assert_eq!(
        recs[0]["path"],
        Value::from(d.join("a.jpg").to_string_lossy().as_ref())
    );
    assert_eq!(
        (recs[0]["width"].clone(), recs[0]["height"].clone()),
        (12.into(), 7.into())
    );
    // The folder may not lie inside an input folder.
    let inside = Run::new(BIN)
        .arg(&d)
        .arg("--extract-images")
        .arg(d.join("x"))
        .run();
    assert_eq!(inside.code, 2, "{}", inside.stderr);
}
