"""Sample documents and queries written for the mgte multilingual search demo (original text, free to use)."""

# Fullwidth CJK punctuation and one-letter Cyrillic words are correct text here, not look-alikes.
# ruff: noqa: RUF001

from __future__ import annotations

from typing import NamedTuple


class Document(NamedTuple):
    lang: str
    title: str
    body: str


class Query(NamedTuple):
    lang: str
    text: str


DOCUMENTS: tuple[Document, ...] = (
    Document(
        "en",
        "Getting to the Train Station",
        (
            "The central train station can be reached from the airport by express train in about "
            "twenty minutes. Tickets are sold at machines in the arrival hall, and a contactless bank "
            "card can also be used directly at the gates. If you prefer the bus, there is a stop right "
            "in front of the station's main entrance, although the trip takes longer during rush hour."
        ),
    ),
    Document(
        "ja",
        "中央駅への行き方",
        (
            "空港から中央駅までは、快速電車で約二十分です。切符は到着ロビーの券売機で購入できるほか、"
            "交通系ICカードがあればそのまま改札を通ることもできます。バスを利用する場合は駅の正面入口の前に"
            "停留所がありますが、朝夕のラッシュ時には時間がかかることがあります。"
        ),
    ),
    Document(
        "es",
        "El café, el té y la salud",
        (
            "Junto con el agua, el café y el té se encuentran entre las bebidas más consumidas del mundo. "
            "Diversos estudios asocian un consumo moderado de café, de tres a cuatro tazas al día, con un "
            "menor riesgo de diabetes tipo 2. El té verde aporta antioxidantes llamados catequinas, aunque "
            "sus efectos sobre la salud todavía se investigan. En exceso, la cafeína puede provocar "
            "insomnio, nerviosismo y palpitaciones."
        ),
    ),
    Document(
        "zh",
        "茶、咖啡与健康",
        (
            "茶是世界上饮用最广泛的饮料之一，中国是茶的原产地。绿茶含有丰富的儿茶素，这是一类具有抗氧化"
            "作用的多酚物质。研究表明，适量饮茶或喝咖啡可能有助于降低某些慢性病的风险，但每天摄入过多"
            "咖啡因会影响睡眠，还可能引起心跳加快。"
        ),
    ),
    Document(
        "de",
        "Gletscherschmelze in den Alpen",
        (
            "Die Gletscher der Alpen haben seit der Mitte des 19. Jahrhunderts mehr als die Hälfte ihres "
            "Volumens verloren. Hauptursache ist die Klimaerwärmung, die in den Alpen etwa doppelt so stark "
            "ausfällt wie im weltweiten Durchschnitt. Besonders heiße Sommer wie der von 2022 beschleunigen "
            "den Eisverlust zusätzlich. Fachleute rechnen damit, dass bis zum Ende des Jahrhunderts ein "
            "Großteil der Alpengletscher verschwunden sein wird."
        ),
    ),
    Document(
        "ru",
        "Таяние горных ледников",
        (
            "Горные ледники по всему миру быстро сокращаются из-за глобального потепления. Тающий лёд "
            "повышает уровень Мирового океана и меняет режим рек, которые питаются талой водой. В Альпах, "
            "на Кавказе и в Гималаях многие ледники за последние десятилетия заметно отступили. Учёные "
            "считают, что без сокращения выбросов парниковых газов многие небольшие ледники исчезнут уже "
            "в этом веке."
        ),
    ),
    Document(
        "fr",
        "Histoire de la Coupe du monde",
        (
            "La première Coupe du monde de football a eu lieu en Uruguay en 1930, et c'est le pays hôte "
            "qui l'a remportée. Organisé par la FIFA, le tournoi se tient tous les quatre ans, sauf en 1942 "
            "et en 1946, éditions annulées à cause de la Seconde Guerre mondiale. Le Brésil détient le "
            "record de victoires avec cinq titres."
        ),
    ),
    Document(
        "ar",
        "تاريخ كأس العالم لكرة القدم",
        (
            "أُقيمت أول بطولة لكأس العالم لكرة القدم في الأوروغواي عام 1930، وفاز بها المنتخب المضيف. "
            "وتُنظَّم البطولة مرة كل أربع سنوات تحت إشراف الاتحاد الدولي لكرة القدم (فيفا). وفي عام 2022 "
            "استضافت قطر البطولة لتكون أول دولة عربية تنظمها، وتُوِّج بلقبها منتخب الأرجنتين."
        ),
    ),
    Document(
        "pt",
        "Como funciona a fotossíntese",
        (
            "A fotossíntese é o processo pelo qual as plantas, as algas e algumas bactérias transformam a "
            "energia da luz em energia química. Nas folhas, a clorofila absorve a luz do sol, e a planta usa "
            "essa energia para combinar gás carbônico e água e produzir glicose. Como subproduto, o processo "
            "libera oxigênio na atmosfera, essencial para a maioria dos seres vivos."
        ),
    ),
    Document(
        "en",
        "Why Leaves Are Green",
        (
            "Leaves look green because chlorophyll, the main pigment used in photosynthesis, absorbs mostly "
            "red and blue light and reflects green light. The light-dependent reactions take place in the "
            "thylakoid membranes of the chloroplasts, where water is split and oxygen is released. The "
            "energy captured there is then used in the Calvin cycle to build sugars from carbon dioxide."
        ),
    ),
    Document(
        "zh",
        "长城简介",
        (
            "长城是中国古代修建的大型军事防御工程，最早可追溯到春秋战国时期。秦始皇统一六国后，将各国原有"
            "的城墙连接起来。今天人们看到的砖石长城大多建于明朝。根据国家文物局2012年公布的调查结果，"
            "历代长城总长度约为两万一千多千米。1987年，长城被列入《世界遗产名录》。"
        ),
    ),
    Document(
        "es",
        "La Gran Muralla China",
        (
            "La Gran Muralla es un conjunto de fortificaciones construidas en el norte de China a lo largo "
            "de más de dos mil años. Si se suman todos sus tramos y ramales, supera los 21 000 kilómetros. "
            "Las secciones mejor conservadas, como la de Badaling, cerca de Pekín, datan de la dinastía "
            "Ming. Contra la creencia popular, no se puede ver a simple vista desde la Luna."
        ),
    ),
    Document(
        "de",
        "Wie Solarzellen Strom erzeugen",
        (
            "Solarzellen bestehen meist aus Silizium, einem Halbleiter. Trifft Sonnenlicht auf die Zelle, "
            "löst es Elektronen aus ihren Bindungen, und ein eingebautes elektrisches Feld erzeugt daraus "
            "Gleichstrom. Ein Wechselrichter wandelt ihn in Wechselstrom um, der im Haushalt genutzt oder "
            "ins Netz eingespeist werden kann. Moderne Module erreichen einen Wirkungsgrad von etwa 20 bis "
            "23 Prozent."
        ),
    ),
    Document(
        "ar",
        "الطاقة الشمسية في العالم العربي",
        (
            "تتمتع المنطقة العربية بعدد كبير من الأيام المشمسة على مدار السنة، مما يجعلها من أنسب مناطق "
            "العالم لإنتاج الطاقة الشمسية. وتحوّل الألواح الشمسية ضوء الشمس مباشرةً إلى كهرباء بفضل الخلايا "
            "الكهروضوئية المصنوعة من السيليكون. وقد أنشأت دول مثل المغرب والإمارات محطات شمسية ضخمة، "
            "منها مجمع نور ورزازات في المغرب."
        ),
    ),
    Document(
        "it",
        "La dieta mediterranea",
        (
            "La dieta mediterranea si basa su cereali, legumi, verdura, frutta, pesce e, soprattutto, olio "
            "extravergine d'oliva. Nel 2010 l'UNESCO l'ha iscritta nella lista del patrimonio culturale "
            "immateriale dell'umanità. Numerosi studi la collegano a un minor rischio di malattie "
            "cardiovascolari, anche grazie ai grassi monoinsaturi contenuti nell'olio d'oliva."
        ),
    ),
    Document(
        "ja",
        "オリーブオイルと地中海料理",
        (
            "オリーブオイルは地中海沿岸の料理に欠かせない食材で、スペイン、イタリア、ギリシャが主な生産国"
            "です。一価不飽和脂肪酸であるオレイン酸を多く含み、心臓や血管の健康に良いとされています。"
            "エキストラバージンオリーブオイルとは、果実を搾っただけで化学的な処理をしていない油のうち、"
            "特に酸度の低いものを指します。"
        ),
    ),
    Document(
        "ru",
        "Вулканы Исландии",
        (
            "Исландия расположена на Срединно-Атлантическом хребте, где расходятся Северо-Американская и "
            "Евразийская литосферные плиты. Кроме того, под островом находится мантийный плюм, поэтому "
            "вулканическая активность здесь особенно высока. В 2010 году извержение вулкана "
            "Эйяфьядлайёкюдль привело к закрытию воздушного пространства над большей частью Европы."
        ),
    ),
    Document(
        "fr",
        "Les volcans d'Islande",
        (
            "L'Islande compte une trentaine de systèmes volcaniques actifs. Depuis 2021, plusieurs "
            "éruptions se sont produites sur la péninsule de Reykjanes, non loin de la capitale, attirant "
            "de nombreux curieux. La chaleur géothermique liée à cette activité permet de chauffer environ "
            "90 % des logements du pays."
        ),
    ),
    Document(
        "en",
        "Learning Python as a Beginner",
        (
            "Python is often recommended as a first programming language because its syntax is short and "
            "easy to read. Beginners usually start with variables, loops and functions, and then write small "
            "scripts to automate everyday tasks. The official tutorial on python.org and interactive "
            "notebooks such as Jupyter make it easy to experiment and see results immediately."
        ),
    ),
    Document(
        "it",
        "Imparare a programmare in Python",
        (
            "Python è un linguaggio di programmazione creato da Guido van Rossum e pubblicato per la prima "
            "volta nel 1991. Grazie alla sua sintassi semplice e leggibile, viene spesso insegnato nelle "
            "scuole e nelle università come primo linguaggio. Per iniziare basta installare l'interprete e "
            "scrivere poche righe di codice, ad esempio un programma che stampa un saluto sullo schermo."
        ),
    ),
)

QUERIES: tuple[Query, ...] = (
    Query("en", "Is drinking green tea every day good for your health?"),
    Query("es", "¿Por qué se están derritiendo los glaciares de los Alpes?"),
    Query("de", "Wann und wo fand die erste Fußball-Weltmeisterschaft statt?"),
    Query("fr", "Comment les plantes transforment-elles la lumière du soleil en énergie ?"),
    Query("zh", "冰岛为什么会有这么多活火山？"),
    Query("ar", "كيف أصل من المطار إلى محطة القطار المركزية؟"),
    Query("ja", "太陽光パネルはどのようにして電気を作るのですか？"),
    Query("ru", "Какова общая длина Великой Китайской стены?"),
)
